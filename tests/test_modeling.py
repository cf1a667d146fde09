"""The bidirectional transformer: attention semantics, masks, padding, dtypes and bad input."""

import pytest
import torch
from transformers import DynamicCache

from helpers import tiny_model


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def test_attention_is_bidirectional(model):
    ids = torch.randint(4, 64, (1, 10))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 4) % 60 + 4
    before, after = logits(model, ids), logits(model, changed)
    assert not torch.allclose(before[0, 0], after[0, 0]), "a later token must change earlier logits"


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_sdpa_equals_eager(padding, dtype, tolerance):
    model = tiny_model().to(dtype)
    ids = torch.randint(4, 64, (2, 9))
    mask = torch.ones_like(ids)
    if padding == "left":
        mask[0, :3] = 0
    elif padding == "right":
        mask[0, -3:] = 0
    model.set_attn_implementation("sdpa")
    sdpa = logits(model, ids, attention_mask=mask).float()
    model.set_attn_implementation("eager")
    eager = logits(model, ids, attention_mask=mask).float()
    torch.testing.assert_close(sdpa, eager, atol=tolerance, rtol=tolerance)


def test_left_padded_batch_gives_each_row_its_own_logits(model):
    a = torch.randint(4, 64, (1, 7))
    b = torch.randint(4, 64, (1, 4))
    batch = torch.cat([a, torch.cat([torch.full((1, 3), 1), b], 1)])
    mask = torch.tensor([[1] * 7, [0, 0, 0] + [1] * 4])
    out = logits(model, batch, attention_mask=mask)
    torch.testing.assert_close(out[0], logits(model, a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 3:], logits(model, b)[0], atol=1e-5, rtol=1e-5)


def test_four_d_mask_matches_padding_mask(model):
    ids = torch.randint(4, 64, (2, 6))
    mask2 = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    mask4 = mask2[:, None, None, :].expand(2, 1, 6, 6).bool()
    pos = (mask2.cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(
        logits(model, ids, attention_mask=mask2), logits(model, ids, attention_mask=mask4, position_ids=pos)
    )


def test_cached_prefix_equals_block_causal_mask(model):
    """A prefix cached alone, then a suffix that sees everything: the same as one pass with that 4-D mask."""
    ids = torch.randint(4, 64, (1, 10))
    cache = DynamicCache()
    with torch.no_grad():
        model(ids[:, :6], past_key_values=cache)
        cached = model(ids[:, 6:], past_key_values=cache, position_ids=torch.arange(6, 10)[None]).logits
    block = torch.ones(10, 10, dtype=torch.bool)
    block[:6, 6:] = False  # prefix rows do not see the suffix
    full = logits(model, ids, attention_mask=block[None, None])
    torch.testing.assert_close(cached, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_cache_is_accepted_and_returned_under_both_names(model):
    """transformers 5.24 renamed `past_key_values` to `cache`: forwards take either name, outputs carry the
    installed version's field, and `.past_key_values` reads it under every supported version."""
    from modeling_illada.outputs import CACHE_FIELD

    ids = torch.randint(4, 64, (1, 10))
    with torch.no_grad():
        old, new = DynamicCache(), DynamicCache()
        out_old = model(ids[:, :6], past_key_values=old)
        out_new = model(ids[:, :6], cache=new)
        assert getattr(out_old, CACHE_FIELD) is old and out_new.past_key_values is new
        assert old.get_seq_length() == new.get_seq_length() == 6
        torch.testing.assert_close(out_old.logits, out_new.logits)
        assert len(model(ids[:, :6], cache=DynamicCache(), return_dict=False)) == 2  # logits, cache
        with pytest.raises(ValueError, match="cache"):
            model(ids, cache=DynamicCache(), past_key_values=DynamicCache())


def test_logits_to_keep_and_inputs_embeds(model):
    ids = torch.randint(4, 64, (2, 8))
    full = logits(model, ids)
    torch.testing.assert_close(logits(model, ids, logits_to_keep=3), full[:, -3:])
    torch.testing.assert_close(logits(model, ids, logits_to_keep=slice(2, 5)), full[:, 2:5])
    torch.testing.assert_close(logits(model, ids, logits_to_keep=torch.tensor([0, 7])), full[:, [0, 7]])
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, full)


def test_hidden_states_and_tuple_output(model):
    ids = torch.randint(4, 64, (1, 5))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        as_tuple = model(ids, return_dict=False)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_bfloat16_runs_on_cpu_and_stays_close():
    model = tiny_model()
    ids = torch.randint(4, 64, (1, 8))
    reference = logits(model, ids)
    low = logits(model.to(torch.bfloat16), ids)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.1


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(4, 64, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()  # the Trainer still calls this name
            assert model.model.gradient_checkpointing
        model(ids).logits.square().mean().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_labels_give_the_masked_diffusion_loss(model):
    ids = torch.randint(4, 64, (1, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 7
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 2:3], torch.tensor([7]))
    torch.testing.assert_close(out.loss, expected)
    weights = torch.full(ids.shape, 0.5)
    torch.testing.assert_close(model(ids, labels=labels, loss_weights=weights).loss, 0.5 * expected)


def test_bad_inputs_name_the_problem(model):
    too_long = torch.randint(4, 64, (1, model.config.max_position_embeddings + 1))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(too_long)
    ids = torch.randint(4, 64, (2, 6))
    with pytest.raises(ValueError, match="4-D `attention_mask`"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D `attention_mask`"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="exactly one of"):
        model()


def test_projections_multiply_few_rows_as_weight_times_x_and_match_linear(monkeypatch):
    from modeling_illada.modeling_illada import IlladaLinear

    monkeypatch.setattr(IlladaLinear, "autotune", False)  # always the transposed product
    layer = IlladaLinear(16, 40, bias=True)
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append((tuple(a.shape), tuple(b.shape))) or real_mm(a, b))
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        fast = layer(x)
        assert calls == [((40, 16), (16, 3))]  # weight @ x.T: the few-rows path
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-6)
        assert fast.shape == (1, 3, 40) and fast.is_contiguous()
        one = torch.randn(1, 1, 16)  # one row goes in twice, as a matrix-matrix product, and comes out once
        single = layer(one)
        assert calls[-1] == ((40, 16), (16, 2)) and single.shape == (1, 1, 40) and single.is_contiguous()
        torch.testing.assert_close(single, torch.nn.functional.linear(one, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-6)
        many = torch.randn(2, IlladaLinear.few_rows, 16)  # 2 * few_rows rows: the default kernel, bit for bit
        assert torch.equal(layer(many), torch.nn.functional.linear(many, layer.weight, layer.bias))
    assert torch.equal(layer(x), expected) and len(calls) == 2  # autograd on: always F.linear


def test_projections_time_both_kernels_once_per_shape_and_keep_the_faster(monkeypatch):
    """The first call with a (shape, rows) times both kernels; the choice is kept and decides every later call."""
    from modeling_illada.modeling_illada import IlladaLinear

    monkeypatch.setattr(IlladaLinear, "kernels", {})
    timed, mm_calls = [], []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: mm_calls.append(tuple(b.shape)) or real_mm(a, b))
    verdict = {3: False, 2: True}  # 3 rows: F.linear is faster; 2 rows: the transposed product
    monkeypatch.setattr(IlladaLinear, "transposed_is_faster",
                        classmethod(lambda cls, w, flat: timed.append(flat.shape[0]) or verdict[flat.shape[0]]))
    layer, other = IlladaLinear(16, 40), IlladaLinear(16, 40)
    x3, x2 = torch.randn(1, 3, 16), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(layer(x3), torch.nn.functional.linear(x3, layer.weight, layer.bias)) and not mm_calls
        torch.testing.assert_close(layer(x2), torch.nn.functional.linear(x2, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-6)
        assert mm_calls == [(16, 2)]
        other(x3), other(x2), layer(x3)  # same shapes, rows: decided already
    assert timed == [3, 2] and IlladaLinear.kernels == {(40, 16, 3): False, (40, 16, 2): True}
    assert mm_calls == [(16, 2), (16, 2)]
    monkeypatch.undo()
    assert IlladaLinear.transposed_is_faster(torch.randn(8, 4), torch.randn(2, 4)) in (True, False)  # the real timer


def test_loaded_weights_are_realigned_so_a_reload_gives_the_same_bits(tmp_path, model):
    from modeling_illada.modeling_illada import IlladaLinear

    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    assert all(m.weight.data_ptr() % 64 == 0 for m in again.modules() if isinstance(m, IlladaLinear))
    ids = torch.randint(4, 64, (1, 6))  # 6 rows: the few-rows kernel, whose rounding depends on alignment
    assert torch.equal(logits(again, ids), logits(model, ids))
