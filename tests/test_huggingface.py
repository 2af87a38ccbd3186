"""``xce.huggingface``: Hugging Face Transformers causal LMs trained with xce's losses.

* ``causal_lm_loss`` is Transformers' ``ForCausalLMLoss`` (its signature and result: shift by
  one, ``ignore_index``, ``num_items_in_batch`` as the denominator, ``shift_labels``), so it can
  be a model's ``loss_function`` or an entry of ``LOSS_MAPPING``.
* ``patch(model)`` computes the loss from the hidden states and the output embedding with
  ``linear_cross_entropy``: the loss and the gradient of every parameter equal the unpatched
  model's (GPT-2 with tied embeddings, Llama; float32 and float64), optimizer steps too, the
  output has ``logits=None``, calls without labels are unchanged, ``unpatch`` restores, and the
  step's peak memory is a fraction of the unpatched one's (no ``(batch, time, vocab)`` logits).

Tiny randomly initialised models from configs (no download). Skipped without transformers.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xce.huggingface as xh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.loss.loss_utils import ForCausalLMLoss  # noqa: E402  (after the skip)

DTYPES = (torch.float32, torch.float64)
# float32: the same sums in another order; float64 against the float64 formula.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ARCHITECTURES = ("gpt2", "llama")
PEAK_MEMORY_WORKER = Path(__file__).parent / "huggingface_workers" / "peak_memory.py"


def _model(architecture: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    if architecture == "gpt2":  # tied input and output embeddings, under `transformer`
        config = transformers.GPT2Config(
            vocab_size=128,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,  # training mode, without randomness
        )
        model = transformers.GPT2LMHeadModel(config)
    elif architecture == "gemma2":  # logits soft-capped after the head: c·tanh(x/c)
        config = transformers.Gemma2Config(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=32,
            final_logit_softcapping=0.5,  # small enough to bend these small random logits
        )
        model = transformers.Gemma2ForCausalLM(config)
    else:  # untied, under `model`
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            tie_word_embeddings=False,
        )
        model = transformers.LlamaForCausalLM(config)
    model = model.to(dtype)
    model.config.loss_type = "ForCausalLM"
    if dtype == torch.float64:  # Transformers' loss rounds float64 logits to float32 (`.float()`)
        model.loss_function = _causal_lm_loss_formula
    return model


def _batch(vocab_size: int, batch: int = 3, time: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, time), generator=generator)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[-1, time - 3 :] = -100  # right padding
    return ids, labels


def _causal_lm_loss_formula(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, **kwargs):
    """ForCausalLMLoss written out, in the logits' dtype: shift by one, sum / n or the mean."""
    target = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1)
    logits = logits.reshape(-1, vocab_size)
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index)
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / (
        num_items_in_batch
    )


def _assert_close(actual, expected, dtype):
    torch.testing.assert_close(
        actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * float(expected.detach().abs().max())
    )


def test_import_xce_does_not_import_it_and_it_imports_neither_torch_nor_transformers():
    code = (
        "import sys, xce; print('xce.huggingface' in sys.modules); import xce.huggingface;"
        " print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False"]


# --- causal_lm_loss: Transformers' ForCausalLMLoss ---------------------------------------------


@pytest.mark.parametrize("num_items_in_batch", [None, 17, "tensor"])
def test_causal_lm_loss_equals_transformers_for_causal_lm_loss(num_items_in_batch):
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 50, requires_grad=True)
    _, labels = _batch(50)
    if num_items_in_batch == "tensor":
        num_items_in_batch = torch.tensor(17)
    expected = ForCausalLMLoss(logits, labels, 50, num_items_in_batch=num_items_in_batch)
    actual = xh.causal_lm_loss(logits, labels, 50, num_items_in_batch=num_items_in_batch)
    _assert_close(actual, expected, torch.float32)
    (g_expected,) = torch.autograd.grad(expected, logits)
    (g_actual,) = torch.autograd.grad(actual, logits)
    _assert_close(g_actual, g_expected, torch.float32)


@pytest.mark.parametrize("num_items_in_batch", [None, 17])
def test_causal_lm_loss_keeps_float64_and_equals_the_formula(num_items_in_batch):
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 50, dtype=torch.float64)
    _, labels = _batch(50)
    actual = xh.causal_lm_loss(logits, labels, 50, num_items_in_batch=num_items_in_batch)
    assert actual.dtype == torch.float64
    _assert_close(actual, _causal_lm_loss_formula(logits, labels, 50, num_items_in_batch), torch.float64)


def test_causal_lm_loss_upcasts_half_precision_logits_as_transformers():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 50).to(torch.bfloat16)
    _, labels = _batch(50)
    actual = xh.causal_lm_loss(logits, labels, 50)
    assert actual.dtype == torch.float32
    _assert_close(actual, ForCausalLMLoss(logits, labels, 50), torch.float32)


def test_causal_lm_loss_takes_shift_labels_and_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 50)
    _, labels = _batch(50)
    shift_labels = torch.where(labels == -100, -1, labels)
    kwargs = {"shift_labels": shift_labels, "ignore_index": -1, "num_items_in_batch": 20, "unused": 1}
    _assert_close(
        xh.causal_lm_loss(logits, labels, 50, **kwargs), ForCausalLMLoss(logits, labels, 50, **kwargs), torch.float32
    )


@pytest.mark.parametrize("how", ["loss_function", "LOSS_MAPPING"])
def test_causal_lm_loss_as_a_models_loss(how, monkeypatch):
    model = _model("llama", torch.float32)
    ids, labels = _batch(model.config.vocab_size)
    expected = model(input_ids=ids, labels=labels).loss
    if how == "loss_function":
        model.loss_function = xh.causal_lm_loss
    else:
        monkeypatch.setitem(transformers.loss.loss_utils.LOSS_MAPPING, "XCEForCausalLM", None)
        model.loss_type = xh.register_loss()
        assert model.loss_function is xh.causal_lm_loss
    _assert_close(model(input_ids=ids, labels=labels).loss, expected, torch.float32)


# --- patch: the fused loss from the hidden states ----------------------------------------------


def _loss_and_grads(model, ids, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    output = model(input_ids=ids, labels=labels, **kwargs)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items_in_batch", [None, 25])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("architecture", [*ARCHITECTURES, "gemma2"])
def test_patched_loss_and_every_gradient_equal_the_unpatched_models(architecture, dtype, num_items_in_batch):
    model = _model(architecture, dtype)
    ids, labels = _batch(model.config.vocab_size)
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    expected, expected_grads = _loss_and_grads(model, ids, labels, **kwargs)
    xh.patch(model)
    actual, grads = _loss_and_grads(model, ids, labels, **kwargs)
    _assert_close(actual.loss, expected.loss, dtype)
    assert actual.logits is None
    assert type(actual) is type(expected)
    assert sorted(grads) == sorted(expected_grads)  # every parameter, the tied embedding once
    for name, grad in grads.items():
        _assert_close(grad, expected_grads[name], dtype)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_patched_model_without_labels_is_the_original_forward(architecture):
    model = _model(architecture, torch.float32)
    ids, _ = _batch(model.config.vocab_size)
    expected = model(input_ids=ids).logits
    xh.patch(model)
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_patched_model_honours_logits_to_keep_with_shift_labels_and_return_dict():
    model = _model("llama", torch.float32)
    ids, labels = _batch(model.config.vocab_size)
    shift_labels = labels[:, -5:].contiguous()
    expected = model(input_ids=ids, labels=labels, logits_to_keep=5, shift_labels=shift_labels).loss
    xh.patch(model)
    actual = model(input_ids=ids, labels=labels, logits_to_keep=5, shift_labels=shift_labels).loss
    _assert_close(actual, expected, torch.float32)
    as_tuple = model(ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    _assert_close(as_tuple[0], model(ids, labels=labels).loss, torch.float32)
    with pytest.raises(ValueError, match="shift_labels"):
        model(input_ids=ids, labels=labels, logits_to_keep=5)


def test_patch_options_go_to_linear_cross_entropy():
    model = _model("gpt2", torch.float64)
    ids, labels = _batch(model.config.vocab_size)
    logits = model(input_ids=ids).logits
    target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    import xce

    expected = xce.cross_entropy(logits, target, axis=-1, z_loss=1e-3, label_smoothing=0.1)
    xh.patch(model, z_loss=1e-3, label_smoothing=0.1)
    _assert_close(model(input_ids=ids, labels=labels).loss, expected, torch.float64)


def test_unpatch_restores_and_patch_keeps_the_signature_and_copies():
    model = _model("gpt2", torch.float32)
    signature = inspect.signature(model.forward)
    assert not xh.is_patched(model)
    xh.patch(model)
    assert xh.is_patched(model)
    assert inspect.signature(model.forward) == signature  # Trainer reads the columns and **kwargs from it
    with pytest.raises(ValueError, match="already patched"):
        xh.patch(model)
    clone = copy.deepcopy(model)
    assert xh.is_patched(clone) and clone.forward.model is clone
    xh.unpatch(model)
    assert not xh.is_patched(model) and "forward" not in vars(model)
    ids, labels = _batch(model.config.vocab_size)
    assert model(input_ids=ids, labels=labels).logits is not None
    with pytest.raises(ValueError, match="not patched"):
        xh.unpatch(model)


def test_patch_refuses_logits_transformed_after_the_head():
    model = _model("llama", torch.float32)
    model.config.logit_scale = 0.5
    with pytest.raises(NotImplementedError, match="logit_scale"):
        xh.patch(model)
    assert not xh.is_patched(model)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_patched_training_steps_equal_the_unpatched_ones(architecture):
    """Trainer's loop: micro-batches accumulate, each loss divided by the step's num_items_in_batch.

    In float64: AdamW divides by the gradients' running scale, so float32 rounding of tiny
    gradients would move some weights by a visible fraction of the learning rate."""
    reference, model = _model(architecture, torch.float64), xh.patch(_model(architecture, torch.float64))
    micro_batches = [_batch(model.config.vocab_size, seed=seed) for seed in range(4)]
    for network in (reference, model):
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
        for step in range(2):
            batches = micro_batches[2 * step : 2 * step + 2]
            num_items = sum(int((labels[:, 1:] != -100).sum()) for _, labels in batches)
            for ids, labels in batches:
                network(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(num_items)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    expected = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        _assert_close(parameter, expected[name], torch.float64)


def _peak_memory(variant: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PEAK_MEMORY_WORKER), variant],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs /proc/self/clear_refs (Linux)")
def test_patched_training_step_peak_memory_is_a_fraction_of_the_unpatched():
    """Llama, vocabulary 32000, hidden 256, 2048 positions: the logits alone are 262 MB in float32."""
    workers = {variant: _peak_memory(variant) for variant in ("unpatched", "patched")}
    results = {}
    for variant, worker in workers.items():
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-4000:]
        results[variant] = json.loads(stdout.strip().splitlines()[-1])
    unpatched, patched = results["unpatched"], results["patched"]
    print(f"peak extra RSS of a step: unpatched {unpatched['extra_bytes']:,} B, patched {patched['extra_bytes']:,} B")
    assert patched["loss"] == pytest.approx(unpatched["loss"], rel=1e-5)
    assert patched["extra_bytes"] < 0.6 * unpatched["extra_bytes"]
