# SPDX-License-Identifier: Apache-2.0
"""Tests of the Mamba-2 language model (samkern.models.sam.lm), its checkpoint loading and
the tokenizer loader.

References:
* HF transformers ``Mamba2ForCausalLM`` (pure-PyTorch path on CPU) with the same random
  weights, loaded from its own ``save_pretrained`` directory: logits and every gradient.
* the model's own full forward for the recurrent ``step`` path (teacher forcing).
* mamba-ssm's ``MambaLMHeadModel`` on the GPU (bf16, 2x rule), skipped without CUDA/mamba-ssm.

HF/mamba-ssm semantic differences found (and how the configs below make them agree):
* HF's ``layer_norm_epsilon`` is also the gated-norm eps inside the mixer; mamba-ssm fixes both
  to 1e-5. samkern carries one ``norm_epsilon`` for all norms, so any eps matches HF (tested
  with 1e-3) and the default matches mamba-ssm.
* HF does not pad the vocabulary: samkern pads to a multiple of 16 with zero rows, so the padded
  logits are exactly 0 and the first ``vocab_size`` logits are compared.
* HF omits a tied ``lm_head.weight`` from its files; mamba-ssm stores it. Both load.
* HF clamps dt to ``time_step_limit`` in the chunked forward but not in its one-token step
  (mamba-ssm's step ignores ``dt_limit`` too; samkern's step applies it). Only the forward is
  compared against HF, with a non-default limit in one case.
* HF ignores ``norm_before_gate`` / ``rms_norm`` config keys (always gate-then-norm, RMSNorm).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from samkern.models.sam.lm import InferenceParams, MambaLM, MambaLMConfig
from samkern.models.sam.tokenizer import load_tokenizer
from samkern.testing import assert_close, assert_close_lowp, assert_exact, hf_mamba2_cpu_path_usable, rel_err

transformers = pytest.importorskip("transformers")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _perturb_(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every parameter off its (often constant: ones, zeros, arange) initial value, so a
    mis-mapped norm weight, bias or D cannot go unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def _tiny_model(**overrides) -> MambaLM:
    cfg = MambaLMConfig.preset("tiny", **overrides)
    m = MambaLM(cfg)
    _perturb_(m)
    # keep the padded embedding rows at zero, as in a real checkpoint
    with torch.no_grad():
        m.backbone.embedding.weight[cfg.vocab_size:] = 0
    return m.eval()


def _hf_model(tmp_path, **cfg_kw):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    base = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8,
                n_groups=2, expand=2, conv_kernel=4, chunk_size=8)
    base.update(cfg_kw)
    hf = Mamba2ForCausalLM(Mamba2Config(**base))
    _perturb_(hf)
    hf.eval()
    hf.save_pretrained(str(tmp_path))
    return hf


HF_CASES = {
    # groups > 1, in/out-proj biases, untied head, L=13 with chunk 8 (not a multiple)
    "groups2_bias_untied": dict(cfg=dict(n_groups=2, use_bias=True, tie_word_embeddings=False), B=2, L=13),
    # tied head (HF stores no lm_head), no conv bias, eps 1e-3, a dt limit that clamps both ways
    "tied_eps_dtlimit": dict(
        cfg=dict(n_groups=1, tie_word_embeddings=True, use_conv_bias=False, layer_norm_epsilon=1e-3,
                 time_step_limit=(0.02, 0.08)),
        B=1, L=11),
}


# --------------------------------------------------------------------------------------------
# HF transformers parity
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hf_mamba2_cpu_path_usable(), reason="transformers would run mamba-ssm/causal-conv1d CUDA kernels on CPU tensors")
@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_matches_hf_mamba2_logits_and_grads(tmp_path, case):
    spec = HF_CASES[case]
    hf = _hf_model(tmp_path, **spec["cfg"])
    model = MambaLM.from_pretrained(str(tmp_path)).eval()
    cfg = model.config
    V = hf.config.vocab_size
    assert cfg.vocab_size == V and cfg.padded_vocab_size == 112
    assert cfg.tie_embeddings == hf.config.tie_word_embeddings
    assert (model.lm_head.weight is model.backbone.embedding.weight) == cfg.tie_embeddings

    ids = torch.randint(0, V, (spec["B"], spec["L"]))
    ref = hf(ids).logits
    out = model(ids)
    assert out.shape == (spec["B"], spec["L"], 112)
    assert_close("logits", out[..., :V], ref, rtol=1e-4)
    # padded vocabulary rows are zero -> their logits are exactly zero
    assert_exact("padded logits", out[..., V:], torch.zeros_like(out[..., V:]))

    # every gradient, through a random cotangent on the real vocabulary
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    (out[..., :V] * g).sum().backward()
    ours = dict(model.named_parameters())
    n_checked = 0
    for name, p in hf.named_parameters():
        key = name.replace("backbone.embeddings.", "backbone.embedding.")
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue  # the same tensor as the embedding
        mine = ours[key]
        assert mine.grad is not None, f"no gradient for {key}"
        grad = mine.grad[:V] if key in ("backbone.embedding.weight", "lm_head.weight") else mine.grad
        assert_close(f"grad {key}", grad, p.grad, rtol=1e-4)
        n_checked += 1
    # every parameter of ours was compared (the tied head is the embedding)
    assert n_checked == len(ours)


def test_hf_config_mapping():
    from transformers import Mamba2Config

    hc = Mamba2Config(vocab_size=1000, hidden_size=96, num_hidden_layers=3, state_size=32, head_dim=24, num_heads=8,
                      n_groups=4, expand=2, conv_kernel=3, chunk_size=64, layer_norm_epsilon=1e-6,
                      residual_in_fp32=False, use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
                      time_step_limit=(0.0, 0.5))
    for src in (hc, hc.to_dict()):
        cfg = MambaLMConfig.from_hf_config(src)
        assert (cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.padded_vocab_size) == (96, 3, 1000, 1008)
        assert cfg.ssm_cfg == {"layer": "Mamba2", "d_state": 32, "d_conv": 3, "expand": 2, "headdim": 24,
                               "ngroups": 4, "chunk_size": 64, "bias": True, "conv_bias": False,
                               "dt_limit": (0.0, 0.5)}
        assert cfg.norm_epsilon == 1e-6 and cfg.residual_in_fp32 is False and cfg.tie_embeddings is True
    bad = hc.to_dict()
    bad["num_heads"] = 7
    with pytest.raises(ValueError, match="num_heads"):
        MambaLMConfig.from_hf_config(bad)
    bad = hc.to_dict()
    bad["hidden_act"] = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        MambaLMConfig.from_hf_config(bad)
    with pytest.raises(ValueError, match="from_json"):
        MambaLMConfig.from_hf_config(MambaLMConfig.preset("tiny").to_dict())


# --------------------------------------------------------------------------------------------
# configs and presets
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,d_model,n_layer", [("130m", 768, 24), ("370m", 1024, 48), ("780m", 1536, 48), ("1.3b", 2048, 48),
                             ("2.7b", 2560, 64)])
def test_presets(name, d_model, n_layer):
    cfg = MambaLMConfig.preset(name)
    assert (cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.padded_vocab_size) == (d_model, n_layer, 50277, 50288)
    assert cfg.ssm_cfg == {"layer": "Mamba2", "d_state": 128, "headdim": 64, "expand": 2, "ngroups": 1,
                           "chunk_size": 256}
    assert cfg.rms_norm and cfg.residual_in_fp32 and cfg.tie_embeddings
    small = MambaLMConfig.preset(name, n_layer=2, ssm_cfg={"chunk_size": 64})
    assert small.n_layer == 2 and small.ssm_cfg["chunk_size"] == 64 and small.ssm_cfg["d_state"] == 128


def test_config_json_roundtrip(tmp_path):
    # the config.json of state-spaces/mamba2-130m, verbatim
    official = {"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
                "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
                "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(official))
    for src in (official, str(tmp_path), str(tmp_path / "config.json"), json.dumps(official)):
        cfg = MambaLMConfig.from_json(src)
        assert cfg.to_dict() == official  # default eps is not written: stays MambaConfig-loadable
    cfg = MambaLMConfig.preset("tiny", norm_epsilon=1e-3, ssm_cfg={"dt_limit": (0.001, float("inf"))})
    out = tmp_path / "out"
    out.mkdir()
    cfg.to_json(str(out))
    back = MambaLMConfig.from_json(str(out))
    assert back == cfg and back.ssm_cfg["dt_limit"] == (0.001, float("inf"))


def test_config_errors():
    with pytest.raises(ValueError, match="Mamba1"):
        MambaLMConfig(d_model=64, n_layer=2, vocab_size=100, ssm_cfg={})
    with pytest.raises(ValueError, match="unknown keys"):
        MambaLMConfig.from_json({"d_model": 64, "n_layer": 2, "ssm_cfg": {"layer": "Mamba2"}, "d_modle": 3})
    with pytest.raises(ValueError, match="from_hf_config"):
        MambaLMConfig.from_json({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2})
    with pytest.raises(ValueError, match="d_intermediate"):
        MambaLMConfig(d_intermediate=128)
    with pytest.raises(ValueError, match="attn_layer_idx"):
        MambaLMConfig(attn_layer_idx=[1])
    with pytest.raises(ValueError, match="d_model"):
        MambaLMConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown preset"):
        MambaLMConfig.preset("7b")
    with pytest.raises(ValueError, match="unknown config fields"):
        MambaLMConfig.preset("tiny", n_layers=3)


# --------------------------------------------------------------------------------------------
# mamba-ssm format checkpoints
# --------------------------------------------------------------------------------------------
def _expected_mamba_ssm_keys(n_layer: int, bias: bool = False) -> set:
    keys = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        keys |= {p + "norm.weight"}
        keys |= {p + "mixer." + k for k in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                                           "norm.weight", "out_proj.weight")}
        if bias:
            keys |= {p + "mixer.in_proj.bias", p + "mixer.out_proj.bias"}
    return keys


@pytest.mark.parametrize("safe", [True, False])
def test_mamba_ssm_roundtrip(tmp_path, safe):
    model = _tiny_model()
    model.save_pretrained(str(tmp_path), safe_serialization=safe)
    fname = "model.safetensors" if safe else "pytorch_model.bin"
    assert sorted(os.listdir(tmp_path)) == sorted(["config.json", fname])
    if safe:
        from safetensors.torch import load_file

        sd = load_file(str(tmp_path / fname))
    else:
        sd = torch.load(str(tmp_path / fname), weights_only=True)
    # names are mamba-ssm's MambaLMHeadModel names, tied head included
    assert set(sd) == _expected_mamba_ssm_keys(2)
    assert_exact("stored lm_head", sd["lm_head.weight"], sd["backbone.embedding.weight"])

    loaded = MambaLM.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 19))
    with torch.no_grad():
        assert_exact("logits after round trip", loaded(ids), model(ids))


def test_mamba_ssm_unpadded_vocab_and_untied(tmp_path):
    # a checkpoint whose embedding has only vocab_size rows is padded on load; untied head too
    model = _tiny_model(tie_embeddings=False, vocab_size=500)
    assert model.config.padded_vocab_size == 512
    model.save_pretrained(str(tmp_path))
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["backbone.embedding.weight"] = sd["backbone.embedding.weight"][:500].contiguous()
    sd["lm_head.weight"] = sd["lm_head.weight"][:500].contiguous()
    save_file(sd, str(tmp_path / "model.safetensors"))
    loaded = MambaLM.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 500, (1, 9))
    with torch.no_grad():
        ref, out = model(ids), loaded(ids)
    assert_exact("logits (real vocab)", out[..., :500], ref[..., :500])
    assert_exact("padded logits", out[..., 500:], torch.zeros_like(out[..., 500:]))


def test_strict_key_errors(tmp_path):
    model = _tiny_model()
    sd = dict(model.state_dict())
    broken = dict(sd)
    broken.pop("backbone.layers.1.mixer.A_log")
    with pytest.raises(ValueError, match=r"missing keys \(1\): backbone\.layers\.1\.mixer\.A_log"):
        MambaLM(model.config).load_checkpoint_state_dict(broken)
    extra = dict(sd)
    extra["backbone.layers.0.mixer.bogus"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): backbone\.layers\.0\.mixer\.bogus"):
        MambaLM(model.config).load_checkpoint_state_dict(extra)
    # non-strict drops the unknown key and loads the rest exactly
    fresh = MambaLM(model.config).eval()
    with pytest.warns(UserWarning, match="bogus"):  # what was dropped is said
        fresh.load_checkpoint_state_dict(extra, strict=False)
    ids = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        assert_exact("non-strict load", fresh(ids), model(ids))
    wrong = dict(sd)
    wrong["backbone.layers.0.mixer.D"] = torch.ones(3)
    with pytest.raises(ValueError, match="shapes do not match.*mixer.D"):
        MambaLM(model.config).load_checkpoint_state_dict(wrong)
    too_big = dict(sd)
    too_big["backbone.embedding.weight"] = torch.zeros(600, 64)
    with pytest.raises(ValueError, match="600 rows but the config's vocabulary needs"):
        MambaLM(model.config).load_checkpoint_state_dict(too_big)
    # fewer rows than the config's vocabulary: an error, not zero embeddings for real tokens
    too_small = dict(sd)
    too_small["backbone.embedding.weight"] = sd["backbone.embedding.weight"][:100]
    with pytest.raises(ValueError, match="100 rows"):
        MambaLM(model.config).load_checkpoint_state_dict(too_small)
    with pytest.raises(ValueError, match="fmt"):
        MambaLM(model.config).load_checkpoint_state_dict(sd, fmt="gguf")
    # HF-named keys in a directory whose config says mamba-ssm: the name is reported
    model.save_pretrained(str(tmp_path))
    from safetensors.torch import load_file, save_file

    file_sd = load_file(str(tmp_path / "model.safetensors"))
    file_sd["backbone.embeddings.weight"] = file_sd.pop("backbone.embedding.weight")
    save_file(file_sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys.*backbone\.embedding\.weight.*unexpected keys.*embeddings"):
        MambaLM.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="no config.json"):
        MambaLM.from_pretrained(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no weights"):
        MambaLM.from_pretrained(str(tmp_path))


# --------------------------------------------------------------------------------------------
# forward variants
# --------------------------------------------------------------------------------------------
def test_inputs_embeds_equals_input_ids():
    model = _tiny_model()
    ids = torch.randint(0, 512, (2, 17))
    emb = model.backbone.embedding(ids).detach()
    with torch.no_grad():
        ref = model(input_ids=ids)
        assert_exact("forward(inputs_embeds)", model(inputs_embeds=emb), ref)
        # the LM head then multiplies 6 rows instead of 34: MKL may pick another kernel for the
        # smaller product (it did on an AMD EPYC, 842 of 3072 logits differing in the last bits),
        # so equal to fp32 rounding, not bit for bit; a wrong slice would be off by O(1)
        assert_close("num_last_tokens", model(input_ids=ids, num_last_tokens=3), ref[:, -3:], 1e-5)
        # prefill/step through embeddings equal the id path
        lg_ids, c_ids = model.prefill(input_ids=ids[:, :9])
        lg_emb, c_emb = model.prefill(inputs_embeds=emb[:, :9])
        assert_exact("prefill(inputs_embeds)", lg_emb, lg_ids)
        s_ids = model.step(input_ids=ids[:, 9], cache=c_ids)
        s_emb = model.step(inputs_embeds=emb[:, 9:10], cache=c_emb)
        assert_exact("step(inputs_embeds)", s_emb, s_ids)
    # gradients: the embeds path gives d/d(inputs_embeds); the id path scatters exactly that
    # into the (tied) embedding rows on top of the head's contribution; all other grads agree
    emb_g = emb.clone().requires_grad_(True)
    g = torch.randn_like(ref)
    model.zero_grad()
    (model(inputs_embeds=emb_g) * g).sum().backward()
    grads_e = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (model(input_ids=ids) * g).sum().backward()
    W = "backbone.embedding.weight"
    scattered = torch.zeros_like(grads_e[W]).index_add_(0, ids.flatten(), emb_g.grad.reshape(-1, 64))
    assert_close("embedding grad (id path)", model.backbone.embedding.weight.grad, grads_e[W] + scattered, rtol=1e-5)
    for n, p in model.named_parameters():
        if n != W:
            assert_close(f"grad {n}", p.grad, grads_e[n], rtol=1e-5)


def test_packed_cu_seqlens_equals_separate_sequences():
    model = _tiny_model()
    a = torch.randint(0, 512, (1, 7))
    b = torch.randint(0, 512, (1, 12))
    packed = torch.cat([a, b], dim=1)
    cu = torch.tensor([0, 7, 19], dtype=torch.int32)
    seq_idx = torch.cat([torch.zeros(7), torch.ones(12)]).to(torch.int32)[None]
    with torch.no_grad():
        ref = torch.cat([model(a), model(b)], dim=1)
        assert_close("cu_seqlens", model(packed, cu_seqlens=cu), ref, rtol=1e-5)
        assert_close("seq_idx", model(packed, seq_idx=seq_idx), ref, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# recurrent decoding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefill_len", [0, 3, 16])
def test_step_teacher_forced_equals_forward(prefill_len):
    model = _tiny_model()
    B, L = 2, 21
    ids = torch.randint(0, 512, (B, L))
    with torch.no_grad():
        full = model(ids)
        if prefill_len == 0:
            cache = model.allocate_inference_cache(B)
            got = []
        else:
            last, cache = model.prefill(ids[:, :prefill_len])
            assert cache.seqlen_offset == prefill_len
            got = [None] * (prefill_len - 1) + [last]
        # state size does not depend on the number of tokens consumed
        sizes = [tuple(s.shape) for st in cache.key_value_memory_dict.values() for s in st]
        for t in range(prefill_len, L):
            got.append(model.step(ids[:, t], cache=cache))
        assert [tuple(s.shape) for st in cache.key_value_memory_dict.values() for s in st] == sizes
        assert cache.seqlen_offset == L
    start = max(prefill_len - 1, 0)
    stepped = torch.stack(got[start:], dim=1)
    assert_close("step logits", stepped, full[:, start:], rtol=1e-5)
    # greedy choice at every position agrees
    assert_exact("argmax", stepped.argmax(-1), full[:, start:].argmax(-1))


def test_layernorm_variant_roundtrip_and_step(tmp_path):
    """rms_norm=False: mamba-ssm's LayerNorm blocks (norm.weight + norm.bias keys)."""
    model = _tiny_model(rms_norm=False, residual_in_fp32=False)
    keys = set(model.state_dict())
    assert {"backbone.layers.0.norm.bias", "backbone.norm_f.bias"} <= keys
    model.save_pretrained(str(tmp_path))
    loaded = MambaLM.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        full = model(ids)
        assert_exact("layernorm round trip", loaded(ids), full)
        ref = torch.nn.functional.layer_norm(
            model.backbone.embedding(ids), (64,), model.backbone.layers[0].norm.weight, model.backbone.layers[0].norm.bias
        )
        assert_close("layer norm", model.backbone.layers[0].norm(model.backbone.embedding(ids)), ref, rtol=1e-6)
        cache = model.allocate_inference_cache(1)
        stepped = torch.stack([model.step(ids[:, t], cache=cache) for t in range(9)], dim=1)
    assert_close("layernorm step", stepped, full, rtol=1e-5)


def test_forward_with_inference_params_decodes_like_mamba_ssm():
    """mamba-ssm's generation loop: forward(inference_params) for the prompt, then L=1 calls
    with seqlen_offset advanced by the caller."""
    model = _tiny_model()
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids)
        params = InferenceParams(max_seqlen=12, max_batch_size=2)
        first = model(ids[:, :5], inference_params=params)
        params.seqlen_offset += 5
        outs = [first]
        for t in range(5, 12):
            outs.append(model(ids[:, t:t + 1], inference_params=params))
            params.seqlen_offset += 1
    assert_close("inference_params decode", torch.cat(outs, dim=1), full, rtol=1e-5)


def test_step_cache_reset_and_dtype():
    model = _tiny_model()
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        ref, cache = model.prefill(ids)
        cache.reset()
        assert cache.seqlen_offset == 0
        assert all(bool((s == 0).all()) for st in cache.key_value_memory_dict.values() for s in st)
        again, _ = model.prefill(ids, cache=cache)
        assert_exact("prefill after reset", again, ref)
        c64 = model.allocate_inference_cache(1, dtype=torch.float64)
        assert all(s.dtype == torch.float64 for st in c64.key_value_memory_dict.values() for s in st)


def test_generate_greedy_consistent_with_forward():
    model = _tiny_model()
    prompt = torch.randint(0, 512, (2, 6))
    gen = model.generate_greedy(prompt, max_new_tokens=8)
    assert gen.shape == (2, 8) and gen.dtype == torch.int64
    with torch.no_grad():
        full = model(torch.cat([prompt, gen[:, :-1]], dim=1))
    assert_exact("greedy tokens", gen, full[:, 5:, :512].argmax(-1))
    # eos handling: once a row emits eos it keeps emitting it; decoding stops when all rows have
    eos = int(gen[0, 2])
    gen_eos = model.generate_greedy(prompt, max_new_tokens=8, eos_token_id=eos)
    expected, stop = gen.clone(), 0
    for r in range(2):
        hits = (gen[r] == eos).nonzero()
        first = int(hits[0]) if len(hits) else 8
        expected[r, first:] = eos
        stop = max(stop, min(first + 1, 8))
    assert_exact("greedy with eos", gen_eos, expected[:, :stop])


# --------------------------------------------------------------------------------------------
# LoRA pass-through
# --------------------------------------------------------------------------------------------
def test_lora_passthrough(tmp_path):
    base = _tiny_model()
    base.save_pretrained(str(tmp_path))
    lora = MambaLM.from_pretrained(str(tmp_path), lora_r=4, lora_alpha=8).eval()
    lora_names = [n for n, _ in lora.named_parameters() if "lora_" in n]
    assert len(lora_names) == 2 * 2 * base.config.n_layer  # lora_A/B on in_proj and out_proj
    ids = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        # lora_B starts at zero: the adapted model equals the base model
        assert_close("lora identity", lora(ids), base(ids), rtol=1e-6)
    g = torch.randn(1, 10, 512)
    (lora(ids) * g).sum().backward()
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    out = tmp_path / "saved"
    lora.save_pretrained(str(out))
    from safetensors.torch import load_file

    assert not any("lora_" in k for k in load_file(str(out / "model.safetensors")))


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------
def test_bad_inputs():
    model = _tiny_model()
    ids = torch.randint(0, 512, (2, 5))
    emb = model.backbone.embedding(ids).detach()
    cases = [
        (dict(), "exactly one"),
        (dict(input_ids=ids, inputs_embeds=emb), "exactly one"),
        (dict(input_ids=ids[0]), "input_ids must have 2 dimensions"),
        (dict(input_ids=ids.float()), "input_ids must have dtype"),
        (dict(input_ids=ids[:0]), "empty"),
        (dict(inputs_embeds=emb[..., :32]), "d_model=64"),
        (dict(inputs_embeds=emb.double()), "dtype"),
        (dict(inputs_embeds=emb[0]), "inputs_embeds must have 3 dimensions"),
        (dict(input_ids=ids, num_last_tokens=-1), "num_last_tokens"),
        (dict(input_ids=ids, seq_idx=torch.zeros(2, 4, dtype=torch.int32)), "seq_idx must have shape"),
        (dict(input_ids=ids, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32)), "B == 1"),
        (dict(input_ids=ids[:1], cu_seqlens=torch.tensor([0, 4], dtype=torch.int32)), "end at"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model(**kwargs)
    with torch.no_grad():
        _, cache = model.prefill(ids)
        with pytest.raises(ValueError, match="fresh cache"):
            model.prefill(ids, cache=cache)
        with pytest.raises(ValueError, match="one token"):
            model.step(ids, cache=cache)
        with pytest.raises(ValueError, match="allocated for batch 2"):
            model.step(ids[:1, 0], cache=cache)
        with pytest.raises(ValueError, match="needs a cache"):
            model.step(ids[:, 0])
        with pytest.raises(ValueError, match="L == 1"):
            model(ids, inference_params=cache)
        with pytest.raises(ValueError, match="batch_size"):
            model.allocate_inference_cache(0)
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate_greedy(ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="MambaLMConfig"):
        MambaLM({"d_model": 64})


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------
def _make_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<|endoftext|>", "<|padding|>", "<unk>"])
    corpus = ["the cat sat on the mat", "a dog barked at the cat", "speech to text with state space models"] * 3
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    return tok


def test_tokenizer_roundtrip(tmp_path):
    _make_tokenizer(tmp_path)
    for src in (str(tmp_path), str(tmp_path / "tokenizer.json")):
        tok = load_tokenizer(src)
        assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0  # as GPT-NeoX
        ids = tok.encode("the cat sat on the mat")
        assert len(ids) > 0 and all(0 <= i < tok.vocab_size for i in ids) and 0 not in ids
        assert tok.decode(ids) == "the cat sat on the mat"
        with_eos = tok.encode("the dog", add_eos=True)
        assert with_eos[-1] == 0
        # decoding stops at EOS (what generate_greedy emits after the end)
        assert tok.decode(torch.tensor(with_eos + [ids[0], ids[1]])) == "the dog"
    # a side config naming a different EOS wins
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|padding|>"}}))
    assert load_tokenizer(str(tmp_path)).eos_token_id == 1
    assert load_tokenizer(str(tmp_path), eos_token="<unk>").eos_token_id == 2
    with pytest.raises(ValueError, match="not in the tokenizer vocabulary"):
        load_tokenizer(str(tmp_path), eos_token="</nope>")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="must be a str"):
        load_tokenizer(str(tmp_path)).encode(3)


# --------------------------------------------------------------------------------------------
# GPU: against mamba-ssm's MambaLMHeadModel
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_matches_mamba_ssm_130m_2layers_bf16():
    mixer_seq = pytest.importorskip("mamba_ssm.models.mixer_seq_simple")
    from mamba_ssm.models.config_mamba import MambaConfig

    cfg = MambaLMConfig.preset("130m", n_layer=2)
    d = cfg.to_dict()
    ssm_cfg = dict(d.pop("ssm_cfg"))
    peer_cfg = MambaConfig(**d, ssm_cfg=ssm_cfg)
    dev = torch.device("cuda")
    peer = mixer_seq.MambaLMHeadModel(peer_cfg, device=dev, dtype=torch.float32).eval()
    _perturb_(peer, scale=0.02)
    ours = MambaLM(cfg, device=dev, dtype=torch.float32).eval()
    ours.load_checkpoint_state_dict(peer.state_dict(), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 300), device=dev)  # 300: not a multiple of chunk 256
    with torch.no_grad():
        ref = peer(ids).logits.float()
        out32 = ours(ids).float()
        peer_bf16 = mixer_seq.MambaLMHeadModel(peer_cfg, device=dev, dtype=torch.bfloat16).eval()
        peer_bf16.load_state_dict(peer.state_dict())
        ours_bf16 = MambaLM(cfg, device=dev, dtype=torch.bfloat16).eval()
        ours_bf16.load_checkpoint_state_dict(peer.state_dict())
        ref_lowp = peer_bf16(ids).logits.float()
        out_lowp = ours_bf16(ids).float()
    e32 = assert_close("fp32 logits vs mamba-ssm", out32, ref, rtol=2e-3)
    e16 = assert_close_lowp("bf16 logits vs mamba-ssm fp32", out_lowp, ref, ref_lowp)
    # decoding: prefill + steps (fp32 recurrent state) against the full fp32 forward, bf16 weights
    with torch.no_grad():
        last, cache = ours_bf16.prefill(ids[:, :200], cache_dtype=torch.float32)
        stepped = [last] + [ours_bf16.step(ids[:, t], cache=cache) for t in range(200, 210)]
        stepped = torch.stack(stepped, dim=1).float()
    es = assert_close_lowp("bf16 step logits", stepped, ref[:, 199:210], ref_lowp[:, 199:210])
    print(f"rel err fp32 {e32:.2e}; bf16 {e16:.2e} (peer bf16 {rel_err(ref_lowp, ref):.2e}); step bf16 {es:.2e}")


def test_loader_refuses_what_would_load_silently_wrong(tmp_path):
    """A tied config with a different stored head, a partial set of LoRA weights, and a
    merged-then-saved adapter (applied once on reload, not twice)."""
    model = _tiny_model()
    if not model.config.tie_embeddings:
        pytest.skip("the tiny preset is untied")
    sd = dict(model.state_dict())
    sd["lm_head.weight"] = torch.randn_like(sd["backbone.embedding.weight"])
    with pytest.raises(ValueError, match="differs from its embedding"):
        MambaLM(model.config).load_checkpoint_state_dict(sd)

    lora = MambaLM(model.config, lora_r=2).eval()
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    lsd = dict(lora.state_dict())
    partial = {k: v for k, v in lsd.items() if not ("layers.0." in k and "lora_" in k)}
    with pytest.raises(ValueError, match="missing keys"):
        MambaLM(model.config, lora_r=2).load_checkpoint_state_dict(partial)

    ids = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        want = lora(ids)
        from samkern.layers.lora_linear import LoRALinear

        for m in lora.modules():
            if isinstance(m, LoRALinear):
                m.merge()
        lora.save_pretrained(str(tmp_path / "with"), include_lora=True)
        lora.save_pretrained(str(tmp_path / "folded"))
        again = MambaLM.from_pretrained(str(tmp_path / "with"), lora_r=2).eval()
        folded = MambaLM.from_pretrained(str(tmp_path / "folded")).eval()
        assert (again(ids) - want).abs().max() < 1e-4
        assert (folded(ids) - want).abs().max() < 1e-4


def test_checkpoint_reader_names_the_file_at_fault(tmp_path):
    from samkern.models.sam import checkpoint as ckpt

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*not valid JSON"):
        ckpt.read_config(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "shard-1.safetensors"}}')
    with pytest.raises(ValueError, match="names the shard 'shard-1.safetensors'"):
        ckpt.read_state_dict(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="weight_map"):
        ckpt.read_state_dict(str(tmp_path))
    with pytest.raises(ValueError, match=r"missing \['vocab_size'\]"):
        MambaLMConfig.from_hf_config({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2})
    with pytest.raises(ValueError, match="hidden_size must be a number"):
        MambaLMConfig.from_hf_config({"model_type": "mamba2", "hidden_size": "sixty", "num_hidden_layers": 2,
                                      "vocab_size": 10})
