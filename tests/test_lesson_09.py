"""Lesson 09's protocol (pruninglib.lessons.transformers): the char GPT, sequential pruning with
calibration inputs propagated through pruned blocks, Block Influence, and paper mode's OPT path on
a tiny OPT built from a config and on the stand-in files (no hub)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pruninglib.lessons import transformers as T
from pruninglib.methods.nm_sparsity import nm_problems
from pruninglib.methods.obc import layer_hessian
from pruninglib.methods.wanda import magnitude_mask
from pruninglib.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = build_model("char_gpt", vocab_size=11, block_size=16, n_layer=3, n_head=2, n_embd=16).eval()
    ids = torch.randint(0, 11, (2000,), generator=torch.Generator().manual_seed(0))
    return model, ids, [T.calibration_windows(ids, 8, 16, seed=0)]


def test_char_gpt_is_causal_and_registered(gpt):
    model, ids, _ = gpt
    assert model.pl_config["name"] == "char_gpt"
    x = ids[:16][None].clone()
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 11
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)
        assert not torch.allclose(model(x)[0, 10:], model(y)[0, 10:])
    with pytest.raises(ValueError, match="longer than the context"):
        model(ids[:17][None])


def test_val_loss_is_the_mean_cross_entropy_of_consecutive_windows(gpt):
    model, ids, _ = gpt
    x = torch.stack([ids[i * 16:i * 16 + 16] for i in range(3)])
    y = torch.stack([ids[i * 16 + 1:i * 16 + 17] for i in range(3)])
    with torch.no_grad():
        want = float(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    assert T.val_loss(model, ids, max_windows=3, batch=2) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("method", list(T.METHODS))
def test_every_method_reaches_the_sparsity_and_leaves_the_rest_alone(gpt, method):
    model, _, calib = gpt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = T.prune_sequential(model, calib, method, 0.5)
    assert T.weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert T.weight_sparsity(T.prune_sequential(model, calib, method, 0.0, 2, 4)) == pytest.approx(0.5, abs=1e-9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} of the original changed"
    for k in ("tok.weight", "pos.weight", "head.weight", "ln_f.weight"):
        assert torch.equal(pruned.state_dict()[k], before[k])


def test_calibration_inputs_are_propagated_through_the_pruned_blocks(gpt):
    model, _, calib = gpt
    seen = []

    def recorder(w, stats):
        seen.append(stats["h"].clone())
        return magnitude_mask(w, 0.5, "row")  # depends on W only, so the pruned model is known

    T.prune_sequential(model, calib, recorder)
    propagated = list(seen)
    seen.clear()
    T.prune_sequential(model, calib, recorder, propagate=False)
    dense_inputs = list(seen)
    assert len(propagated) == 3 * 4  # 3 blocks x (qkv, attn.proj, fc, proj)
    pruned = T.prune_sequential(model, calib, "magnitude_row", 0.5)
    h_pruned = layer_hessian(T.layer_inputs(pruned, calib, "blocks.1.attn.qkv"))
    h_dense = layer_hessian(T.layer_inputs(model, calib, "blocks.1.attn.qkv"))
    assert torch.allclose(propagated[4], h_pruned, atol=1e-8)   # block 1's first Linear
    assert torch.allclose(dense_inputs[4], h_dense, atol=1e-8)
    assert not torch.allclose(h_pruned, h_dense, atol=1e-4)
    assert torch.allclose(propagated[0], dense_inputs[0])      # block 0 sees the same either way


def test_block_influence_is_zero_for_a_block_that_does_nothing(gpt):
    model, _, calib = gpt
    m = build_model("char_gpt", vocab_size=11, block_size=16, n_layer=3, n_head=2, n_embd=16)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        for lin in (m.blocks[1].attn.proj, m.blocks[1].proj):
            lin.weight.zero_()
            lin.bias.zero_()
    bi = T.block_influence(m, calib)
    assert bi[1] == pytest.approx(0.0, abs=1e-9) and bi[0] > 1e-3 and bi[2] > 1e-3
    with torch.no_grad():
        x = calib[0]
        assert torch.allclose(m(x), T.drop_blocks(m, [1])(x), atol=1e-6)
        e = m.embed(x)
        manual = 1 - float(F.cosine_similarity(e, m.blocks[0](e), dim=-1).mean())
    assert bi[0] == pytest.approx(manual, rel=1e-5)


def test_sampling_is_reproducible(gpt):
    model, ids, _ = gpt

    class Vocab:
        def encode(self, s):
            return torch.tensor([int(c) for c in s])

        def decode(self, t):
            return "".join(str(int(i) % 10) for i in t)

    a = T.sample_text(model, Vocab(), "12", 30, seed=3)
    assert len(a) == 30 and a == T.sample_text(model, Vocab(), "12", 30, seed=3)


def test_compare_returns_one_row_per_method_and_pattern(gpt):
    model, ids, calib = gpt
    rows, kept = T.compare(model, calib, ["magnitude", "wanda"], [(0.5, 0, 0), (0.0, 2, 4)],
                           lambda m: T.val_loss(m, ids, 4), keep=lambda meth, lab: lab == "2:4", progress=False)
    assert [(r["method"], r["pattern"]) for r in rows] == [("magnitude", "50%"), ("wanda", "50%"),
                                                            ("magnitude", "2:4"), ("wanda", "2:4")]
    assert set(kept) == {("magnitude", "2:4"), ("wanda", "2:4")}
    with pytest.raises(ValueError, match="unknown method"):
        T.prune_sequential(model, calib, "obd")


# ------------------------------------------------------------------ paper mode's OPT path
transformers = pytest.importorskip("transformers")


def test_sparsegpt_and_wanda_prune_a_tiny_opt_built_from_a_config():
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                 num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=16)
    opt = transformers.OPTForCausalLM(cfg).eval()
    calib = [torch.randint(3, 50, (1, 32)) for _ in range(3)]
    ids = torch.randint(3, 50, (1, 96))
    dense = T.perplexity(opt, ids, 32)
    assert math.isfinite(dense) and dense > 1
    for method in ("sparsegpt", "wanda"):
        pruned = T.prune_sequential(opt, calib, method, 0.0, 2, 4)
        for layer in T.blocks_of(pruned):
            for name, lin in layer.named_modules():
                if isinstance(lin, torch.nn.Linear):
                    assert nm_problems(lin.weight, 2, 4) == [], f"{method} {name}"
        assert math.isfinite(T.perplexity(pruned, ids, 32))
    assert T.weight_sparsity(T.prune_sequential(opt, calib, "sparsegpt", 0.5)) == pytest.approx(0.5, abs=0.01)


def test_paper_mode_offline_without_a_copy_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="huggingface-cli download facebook/opt-125m"):
        T.load_opt()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Salesforce/wikitext"):
        T.load_wikitext2()


def test_paper_mode_reads_the_standins_with_the_real_loaders(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from tests.standins import text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    text.write(tmp_path)
    monkeypatch.setenv("PRUNINGLIB_DATA", str(tmp_path))
    model, tok, where = T.load_opt()
    assert where == str(tmp_path / "hf" / "facebook" / "opt-125m")
    test_ids = tok("\n\n".join(T.load_wikitext2()["text"]), return_tensors="pt").input_ids
    calib = T.c4_calibration(tok, T.load_c4(), 2, 2048, seed=0)
    assert [c.shape for c in calib] == [(1, 2048)] * 2 and test_ids.shape[1] >= 2 * 2048
    pruned = T.prune_sequential(model, calib, "sparsegpt", 0.5)
    assert T.weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert math.isfinite(T.perplexity(pruned, test_ids, 2048, max_segments=1))
