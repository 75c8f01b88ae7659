"""Pretrain the sandbox base model: a ~4M-parameter Llama on chat-formatted clause-mix dialogues.

Each training row is one dialogue, ``<|user|>\\n{prompt}<|end|><|assistant|>\\n{random_response}<|end|>``,
so the base model already speaks the chat format and stops at ``<|end|>``; SFT then only has to
teach it which clauses to pick. The committed checkpoint (``base_model_path()``) was made with (how long it
took: docs/PERFORMANCE.md, "Other timings")::

    python -m rlhf_widgets.sandbox.pretrain --out rlhf_widgets/sandbox/assets/base  # 2000 steps

Every layer width is a multiple of 64 so that bitsandbytes can load it in 4 bits on CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import trange
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from rlhf_widgets.sandbox.tokenizer import MODEL_MAX_LENGTH, build_tokenizer
from rlhf_widgets.sandbox.world import make_prompts, random_response

DEFAULT_STEPS = 2000


def base_model_path() -> Path:
    """The committed pretrained sandbox checkpoint (an HF directory: model, tokenizer, configs)."""
    return Path(__file__).parent / "assets" / "base"


def model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The base model's shape: hidden 256, 4 layers × 4 heads, MLP 768, tied embeddings, no dropout."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def dialogue_texts(tokenizer: PreTrainedTokenizerFast, n: int, seed: int = 0) -> list[str]:
    """``n`` chat-formatted (train prompt, ``random_response``) dialogues, deterministic in ``seed``."""
    rng = random.Random(f"pretrain-{seed}")
    return [
        tokenizer.apply_chat_template(
            [*p.messages, {"role": "assistant", "content": random_response(p, rng)}], tokenize=False
        )
        for p in make_prompts(n, seed=seed, split="train")
    ]


def batch_encoding(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], seq_len: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` (B, ≤ seq_len); pads are −100 in labels."""
    batch = tokenizer(
        texts,
        padding="longest",
        truncation=True,
        max_length=seq_len,
        padding_side="right",
        return_tensors="pt",
    )
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return dict(batch)


def build_base_model(
    out_dir: str | Path,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 2e-3,
) -> Path:
    """Build the tokenizer, pretrain the base model and save both as an HF directory; returns it.

    Args:
        out_dir: where ``model.safetensors``, ``config.json``, ``generation_config.json`` (plain
            sampling at temperature 1, at most 64 new tokens), the tokenizer files and
            ``pretrain.json`` (arguments, loss curve, wall time) go.
        steps: optimizer steps (default ``DEFAULT_STEPS``); one new batch of dialogues per step.
        seed: seeds the tokenizer corpus, the dialogues and the weight init (default 0).
        batch_size: dialogues per step (default 16).
        seq_len: maximum tokens per dialogue (default 128); longer ones are truncated.
        lr: peak AdamW learning rate (default 2e-3); linear warm-up over the first 5% of steps,
            then cosine decay to 0.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(seed=seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(tokenizer))
    texts = dialogue_texts(tokenizer, steps * batch_size, seed=seed)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses: list[float] = []
    model.train()
    progress = trange(steps, desc="pretraining sandbox model")
    for step in progress:
        batch = batch_encoding(tokenizer, texts[step * batch_size : (step + 1) * batch_size], seq_len)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            progress.set_postfix(loss=f"{losses[-1]:.3f}")

    model.eval()
    # default decoding = plain sampling at temperature 1 (no top-k/top-p), the distribution RLHF assumes
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log = {
        "args": {"steps": steps, "seed": seed, "batch_size": batch_size, "seq_len": seq_len, "lr": lr},
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_first": losses[0],
        "loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "loss_every_50_steps": losses[::50],
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
    }
    (out_dir / "pretrain.json").write_text(json.dumps(log, indent=2) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rlhf_widgets.sandbox.pretrain --out DIR [--steps N] [--seed S] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="dialogues per step")
    parser.add_argument("--seq-len", type=int, default=128, help="max tokens per dialogue")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    args = parser.parse_args(argv)
    path = build_base_model(args.out, args.steps, args.seed, args.batch_size, args.seq_len, args.lr)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
