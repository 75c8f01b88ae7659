"""The TRL stages' steps in length-sorted pieces (runtime.length_split): the same gradient as the whole batch."""

from __future__ import annotations

import itertools

import pytest
import torch

from rlhf_widgets.runtime.length_split import length_groups, length_split


def _cost(lengths: list[int], groups: list[list[int]], overhead: int) -> int:
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def test_length_groups_are_the_cheapest_cut_of_the_sorted_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(20, 90, (7,), generator=gen).tolist()
        groups = length_groups(lengths, overhead=48)
        assert sorted(itertools.chain(*groups)) == list(range(7))
        order = sorted(range(7), key=lambda i: lengths[i])
        best = min(_cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, 7), strict=True)], 48)
                   for k in range(7) for cuts in itertools.combinations(range(1, 7), k))
        assert _cost(lengths, groups, 48) == best
    assert length_groups([50] * 16) == [sorted(range(16))]  # nothing to save: one piece


def _grads(trainer, model, batch, num_items) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 1  # (set by the training loop)
    loss = trainer.training_step(model, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()},
                                 num_items)
    return {"loss": loss.detach().clone(),
            **{n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}}


def _assert_same(whole: dict, pieces: dict) -> None:
    assert whole.keys() == pieces.keys()
    for name, g in whole.items():
        torch.testing.assert_close(pieces[name], g, rtol=2e-5, atol=2e-7, msg=name)


def _trainers(trainer_cls, config, dataset, model, tokenizer):
    whole = trainer_cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    split = length_split(trainer_cls)(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    return whole, split


def test_sft_step_in_pieces_gives_the_whole_batch_gradient(tmp_path) -> None:
    import trl

    from rlhf_widgets.runtime.models import load_causal_lm
    from rlhf_widgets.sandbox import sft_dataset
    from rlhf_widgets.stages.sft import SFTStageConfig

    model, tokenizer = load_causal_lm("sandbox")
    config = SFTStageConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, bf16=False)
    whole, split = _trainers(trl.SFTTrainer, config, sft_dataset(64, seed=0), model, tokenizer)
    batch = next(iter(split.get_train_dataloader()))
    num_items = split._get_num_items_in_batch([batch], torch.device("cpu"))
    assert num_items is not None
    pieces = split._length_pieces(batch, num_items)
    assert pieces is not None and len(pieces) >= 2  # the sandbox's demonstrations differ enough in length to cut
    assert sum(p["input_ids"].numel() for p, _ in pieces) < batch["input_ids"].numel()
    _assert_same(_grads(whole, model, batch, num_items), _grads(split, model, batch, num_items))


def test_reward_step_in_pieces_gives_the_whole_batch_gradient(tmp_path) -> None:
    import datasets
    import trl

    from rlhf_widgets import sandbox
    from rlhf_widgets.runtime.config import ModelConfig
    from rlhf_widgets.runtime.models import load_reward_backbone
    from rlhf_widgets.stages.reward.model import RewardStageConfig, _tokenized_pairs

    torch.manual_seed(0)
    model, tokenizer = load_reward_backbone(ModelConfig())
    prompts = sandbox.make_prompts(16, seed=0)
    gen = torch.Generator().manual_seed(0)

    def answer(p) -> str:
        words = "Sure, here is what we can do about your order today".split()
        return " ".join(words[: int(torch.randint(2, len(words), (1,), generator=gen))])

    rows = [{"prompt": p.messages, "chosen": [{"role": "assistant", "content": answer(p)}],
             "rejected": [{"role": "assistant", "content": answer(p) + " and more"}]} for p in prompts]
    config = RewardStageConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, bf16=False)
    dataset, _ = _tokenized_pairs(datasets.Dataset.from_list(rows), tokenizer, config.max_length)
    whole, split = _trainers(trl.RewardTrainer, config, dataset, model, tokenizer)
    batch = next(iter(split.get_train_dataloader()))
    pieces = split._length_pieces(batch, None)
    assert pieces is not None and len(pieces) >= 2
    assert sum(w for _, w in pieces) == pytest.approx(1.0)
    _assert_same(_grads(whole, model, batch, None), _grads(split, model, batch, None))


def test_dpo_step_in_pieces_gives_the_whole_batch_gradient(tmp_path) -> None:
    import datasets
    import trl

    from rlhf_widgets.runtime.models import load_causal_lm
    from rlhf_widgets.sandbox import make_prompts
    from rlhf_widgets.stages.dpo import DPOStageConfig

    model, tokenizer = load_causal_lm("sandbox")
    gen = torch.Generator().manual_seed(1)
    words = "Sure, here is what we can do about your order today and tomorrow".split()

    def answer() -> list[dict]:
        length = int(torch.randint(1, len(words), (1,), generator=gen))
        return [{"role": "assistant", "content": " ".join(words[:length])}]

    rows = [{"prompt": p.messages, "chosen": answer(), "rejected": answer()} for p in make_prompts(16, seed=0)]
    config = DPOStageConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, bf16=False)
    whole, split = _trainers(trl.DPOTrainer, config, datasets.Dataset.from_list(rows), model, tokenizer)
    batch = next(iter(split.get_train_dataloader()))
    pieces = split._length_pieces(batch, None)
    assert pieces is not None and len(pieces) >= 2
    _assert_same(_grads(whole, model, batch, None), _grads(split, model, batch, None))
