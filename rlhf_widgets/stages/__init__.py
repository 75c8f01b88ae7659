"""One place per stage: `sft`, `reward` (reward models and ensembles), `dpo`, `grpo` (GRPO and RLOO), `ppo`,
`best_of`. Each imports the runtime and the other stages' public faces only."""
