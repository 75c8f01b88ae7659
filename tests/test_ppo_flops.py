"""The FLOP count of a PPO update (`ppo.flops`) against a hand count, and the phase clock (`ppo.timing`)."""

import time

import pytest
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_widgets.stages.ppo.flops import ModelShape, forward_backward, lora_params, ppo_update_flops
from rlhf_widgets.stages.ppo.timing import NO_CLOCK, PhaseClock

# hidden 8, 2 layers, 2 heads of 4, 1 KV head, MLP 12, vocab 10
TINY = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, tie_word_embeddings=False)
# one layer by hand: q 8·8 + k 8·4 + v 8·4 + o 8·8 = 192, gate + up + down 3·8·12 = 288 → 480; LM head 8·10 = 80
LAYER, HEAD = 480, 80
# LoRA r=2 on every linear of a layer: r·(in + out) = 2·(16 + 12 + 12 + 16 + 20 + 20 + 20) = 232 per layer
LORA_PER_LAYER = 232


def test_shape_of_a_tiny_llama_by_hand() -> None:
    shape = ModelShape.from_config(TINY)
    assert (shape.num_layers, shape.layer_params, shape.lm_head_params) == (2, LAYER, HEAD)
    assert shape.params == 2 * LAYER + HEAD
    model = LlamaForCausalLM(TINY)
    assert ModelShape.from_model(model) == shape  # read off the modules: the same
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"), adapter_name="policy")
    assert ModelShape.from_model(peft) == shape  # adapters are not the base's matmuls
    assert lora_params(peft, "policy") == 2 * LORA_PER_LAYER
    peft.add_adapter("value", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                         layers_to_transform=[1]))
    assert lora_params(peft, "value") == 2 * (16 + 12)  # one layer's q and v
    assert lora_params(peft, "policy") == 2 * LORA_PER_LAYER


def test_update_flops_of_the_shared_base_by_hand() -> None:
    """B=2 rollouts of P=3 prompt + T=2 response tokens, 1 epoch, LoRA policy on both layers, value adapter on the
    top layer, merged sampling — every phase counted by hand."""
    got = ppo_update_flops(ModelShape.from_config(TINY), batch=2, prompt_tokens=3, response_tokens=2,
                           num_ppo_epochs=1, policy_lora=2 * LORA_PER_LAYER, value_lora=LORA_PER_LAYER,
                           value_layers=1)
    layers = 2 * LAYER  # 960
    # generation: prefill 2·3 tokens + 2·(2 − 1) decode steps through the layers; the LM head once per step, 2·2
    assert got["generation"] == 2 * layers * 8 + 2 * HEAD * 4 == 16000
    # reference: 2·(3 + 2) = 10 tokens through the layers, the LM head on T + 1 = 3 positions each
    assert got["reference_forward"] == 2 * layers * 10 + 2 * HEAD * 6 == 20160
    # values: the top layer + its adapter (the trunk below comes from the reference forward)
    assert got["value_forward"] == 2 * (LAYER + LORA_PER_LAYER) * 10 == 14240
    assert got["policy_forward"] == 0 and got["reward"] == 0
    # training: the adapters 3× their forward, the frozen base and LM head on the gradient's path 2×
    policy = 2 * 10 * (3 * 2 * LORA_PER_LAYER + 2 * layers) + 2 * 6 * (2 * HEAD)  # 66240 + 1920
    value = 2 * 10 * (3 * LORA_PER_LAYER + 2 * LAYER)  # 33120
    assert got["train_forward_backward"] == policy + value == 101280
    assert got["total"] == 16000 + 20160 + 14240 + 101280
    # 4 epochs: 4× the training, the rollout unchanged; a reward model's FLOPs are added as given
    four = ppo_update_flops(ModelShape.from_config(TINY), batch=2, prompt_tokens=3, response_tokens=2,
                            num_ppo_epochs=4, policy_lora=2 * LORA_PER_LAYER, value_lora=LORA_PER_LAYER,
                            value_layers=1, reward_flops=1234.0)
    assert four["train_forward_backward"] == 4 * 101280
    assert four["total"] == got["total"] + 3 * 101280 + 1234


def test_update_flops_of_full_models_and_the_options() -> None:
    shape = ModelShape.from_config(TINY)
    kw = dict(batch=2, prompt_tokens=3, response_tokens=2, num_ppo_epochs=1)
    full = ppo_update_flops(shape, shared_base=False, policy_lora=999, value_layers=1, **kw)
    # every weight trained: 3× the forward; the value network is the whole stack (no LM head)
    assert full["train_forward_backward"] == 3 * (2 * 960 * 10 + 2 * HEAD * 6) + 3 * 2 * 960 * 10
    assert full["value_forward"] == 2 * 960 * 10
    shared = dict(policy_lora=464, value_lora=232, value_layers=1, **kw)
    base = ppo_update_flops(shape, **shared)
    unmerged = ppo_update_flops(shape, merged_generation=False, **shared)
    assert unmerged["generation"] - base["generation"] == 2 * 464 * 8
    forward = ppo_update_flops(shape, policy_forward_in_rollout=True, **shared)
    assert forward["policy_forward"] == 2 * (960 + 464) * 10 + 2 * HEAD * 6
    checkpointed = ppo_update_flops(shape, activation_checkpointing=True, **shared)
    # one more forward of the checkpointed layers (adapters included), not of the LM head
    assert checkpointed["train_forward_backward"] - base["train_forward_backward"] == 2 * 10 * (464 + 960 + 232 + 480)
    assert forward_backward(1, 0, 1) == 6 and forward_backward(0, 1, 1) == 4
    # the prompt-swap check: a second reference forward of the batch's shape
    swapped = ppo_update_flops(shape, reference_passes=2, **shared)
    assert swapped["reference_forward"] == 2 * base["reference_forward"] == 2 * (2 * 960 * 10 + 2 * HEAD * 6)
    assert swapped["total"] - base["total"] == base["reference_forward"]


def test_phase_clock_adds_up_repeated_phases() -> None:
    clock = PhaseClock("cpu")
    for _ in range(2):
        with clock("a"):
            time.sleep(0.01)
    with pytest.raises(KeyError), clock("b"):
        raise KeyError("b")  # an exception still charges the phase
    assert clock.seconds["a"] >= 0.02 and set(clock.seconds) == {"a", "b"}
    clock.reset()
    assert dict(clock.seconds) == {}
    with NO_CLOCK("a"):
        pass
    assert dict(NO_CLOCK.seconds) == {}
