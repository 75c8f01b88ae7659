"""Peak GPU memory and tokens/s of one PPO update on a Llama-3.1-8B-shaped model, 4-bit base + LoRA.

Random weights (nothing can be downloaded): the shape is what matters for memory and speed. The
model is built at the requested shape, saved once (bf16 on CUDA, fp32 on CPU), then loaded by our
`PPOTrainer` exactly as a hub model would be — 4-bit NF4 base, policy/value LoRA adapters, reference =
adapters off. The reward is a cheap function of the response (the benchmark is about the update, not
the reward model). One warm-up update, then `--updates` timed ones.

    python benchmarks/ppo_4bit_memory.py --shape 8b      # on a CUDA GPU (batch 8, 256 new tokens)
    python benchmarks/ppo_4bit_memory.py --shape tiny    # anywhere, CPU included (a smoke run)

Prints one JSON line: peak GPU memory of the timed updates (allocated and reserved, GiB), seconds
per update, generated tokens per second over the whole update, and the shape.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_widgets.runtime.config import ModelConfig  # noqa: E402
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer  # noqa: E402

SHAPES = {
    # Llama-3.1-8B: hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336, vocab 128256
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=False),
}
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_model_dir(shape: str, out: Path) -> tuple[Path, int]:
    """A word-level tokenizer with the shape's full vocabulary, and a random Llama of that shape."""
    spec = dict(SHAPES[shape])
    specials = ["<|end|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(spec["vocab_size"] - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
                                        additional_special_tokens=specials[2:])
    tokenizer.chat_template = CHAT
    config = LlamaConfig(**spec, max_position_embeddings=1024, eos_token_id=0, pad_token_id=1, bos_token_id=None)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    n_params = model.num_parameters()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return out, n_params


def length_reward(prompts, responses):
    """Stand-in reward: longer responses score higher (the benchmark times the update, not the RM)."""
    return [len(r.split()) / 100.0 for r in responses]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=2,
                        help="rollouts per forward/backward (gradients accumulate over the batch)")
    parser.add_argument("--updates", type=int, default=1, help="timed updates after one warm-up")
    parser.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a temp dir)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        model_dir, n_params = build_model_dir(args.shape, Path(tmp) / "model")
        build_s = time.perf_counter() - t0
        prompts = [" ".join(f"w{(7 * i + j) % 500 + 10}" for j in range(24)) for i in range(64)]
        config = PPOConfig(output_dir=str(Path(tmp) / "ppo"), batch_size=args.batch_size,
                           mini_batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                           rollout_batch_size=args.micro_batch_size,
                           num_ppo_epochs=args.ppo_epochs, max_new_tokens=args.new_tokens,
                           missing_eos_penalty=0.0, sample_every=0, num_updates=args.updates + 1,
                           learning_rate=1e-6, max_ratio=1e9)  # random weights: measure the cost, not learning
        t0 = time.perf_counter()
        trainer = PPOTrainer(prompts, config, reward=length_reward,
                             model=ModelConfig(model_name_or_path=str(model_dir), use_peft=True, load_in_4bit=True))
        load_s = time.perf_counter() - t0
        trainer.step()  # warm-up (CUDA kernels, allocator)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times, tokens = [], 0
        for _ in range(args.updates):
            t0 = time.perf_counter()
            metrics = trainer.step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            tokens += metrics["val/response_length"] * args.batch_size
        result = {
            "shape": args.shape, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "parameters_billion": round(n_params / 1e9, 3),
            "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "new_tokens": args.new_tokens,
            "ppo_epochs": args.ppo_epochs,
            "seconds_per_update": round(sum(times) / len(times), 2),
            "generated_tokens_per_s": round(tokens / sum(times), 1),
            "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "build_checkpoint_s": round(build_s, 1), "load_s": round(load_s, 1),
            "torch": torch.__version__, "pid": os.getpid(),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
