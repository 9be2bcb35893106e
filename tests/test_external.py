"""Published Mamba2 checkpoints (transformers and mamba_ssm layouts) load with logits equal to their source."""

from __future__ import annotations

import json

import pytest
import torch

from ragsoup.checkpoint import fingerprint, load_model, save_checkpoint
from ragsoup.errors import RagsoupError
from ragsoup.external import detect_layout
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import SPECIALS, HFTokenizer

SENTENCES = [
    "the blue fox jumps over the lazy dog",
    "a special magic number hides in the long document",
    "which city is the capital of the small country",
    "mamba models keep a fixed size state per layer",
]


def _hf_tokenizer():
    """A tiny WordLevel `tokenizers` tokenizer without ragsoup's specials (like a published tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False))
    return tok


def _ids(n_tok: int, batch: int = 2, length: int = 21, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tok, (batch, length), generator=g)


@torch.no_grad()
def _jitter(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init (norm weights 1, D 1, ...) so a misplaced one shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        scale = 0.3 if p.dim() == 1 else 0.05
        p.add_(torch.randn(p.shape, generator=g) * scale)


def _hf_checkpoint(tmp_path, n_groups: int, tie: bool, vocab: int | None):
    """A random transformers Mamba2ForCausalLM saved with save_pretrained + tokenizer.json; returns (model, n_tok)."""
    transformers = pytest.importorskip("transformers")
    tok = _hf_tokenizer()
    n_tok = tok.get_vocab_size()
    torch.manual_seed(n_groups)
    hcfg = transformers.Mamba2Config(
        hidden_size=32, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=4, expand=2, n_groups=n_groups,
        vocab_size=vocab or n_tok, chunk_size=8, conv_kernel=4, tie_word_embeddings=tie, layer_norm_epsilon=1e-5,
    )
    model = transformers.Mamba2ForCausalLM(hcfg).eval()
    _jitter(model, seed=n_groups)
    if tie:
        assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    model.save_pretrained(tmp_path)
    tok.save(str(tmp_path / "tokenizer.json"))
    return model, n_tok


@pytest.mark.parametrize(
    "n_groups,tie,vocab",
    [(1, False, None), (2, True, None), (2, False, 100)],
    ids=["g1-untied-grown", "g2-tied-grown", "g2-untied-padded"],
)
def test_transformers_checkpoint_matches_transformers_logits(tmp_path, n_groups, tie, vocab):
    hf, n_tok = _hf_checkpoint(tmp_path, n_groups, tie, vocab)
    assert detect_layout(json.loads((tmp_path / "config.json").read_text())) == "transformers"
    loaded = load_model(tmp_path)
    ids = _ids(n_tok)
    with torch.no_grad():
        want = hf(ids).logits
        got, _ = loaded.model(ids)
    assert got.shape[-1] == (n_tok + len(SPECIALS) if vocab is None else vocab)
    torch.testing.assert_close(got[..., :n_tok], want[..., :n_tok], rtol=1e-4, atol=1e-4)
    # step-by-step decoding agrees with the parallel scan on the grown model too
    with torch.no_grad():
        st = loaded.model.empty_states(ids.shape[0])
        for t in range(ids.shape[1]):
            lg, st = loaded.model.step(ids[:, t], st)
    torch.testing.assert_close(lg[:, :n_tok], want[:, -1, :n_tok], rtol=1e-4, atol=1e-4)

    # the tokenizer gained ragsoup's special tokens; the embedding grew when they did not fit
    tok = loaded.tokenizer
    assert isinstance(tok, HFTokenizer)
    specials = [tok.pad_id, tok.doc_id, tok.q_id, tok.a_id, tok.eos_id]
    assert specials == list(range(n_tok, n_tok + len(SPECIALS)))
    ext = loaded.meta["external"]
    assert ext["layout"] == "transformers" and ext["tokenizer_vocab"] == n_tok
    assert ext["added_special_tokens"] == dict(zip(SPECIALS, specials))
    assert ext["grown_rows"] == (len(SPECIALS) if vocab is None else 0)
    assert loaded.model.cfg.vocab_size == (n_tok + len(SPECIALS) if vocab is None else vocab)
    assert loaded.model.cfg.tie_embeddings == tie
    emb = loaded.model.backbone.embedding.weight
    mean = hf.backbone.embeddings.weight[:n_tok].mean(0)
    for i in specials:  # new rows start at the mean of the tokenizer's own rows
        torch.testing.assert_close(emb[i], mean)
    if tie:
        assert loaded.model.lm_head.weight is emb
    else:
        torch.testing.assert_close(loaded.model.lm_head.weight[specials[0]], hf.lm_head.weight[:n_tok].mean(0))
    assert tok.encode("the blue fox") == hf_tok_ids(tmp_path, "the blue fox")
    assert len(loaded.fingerprint) == 16 and loaded.fingerprint == fingerprint(tmp_path)


def hf_tok_ids(path, text):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json")).encode(text).ids


def test_external_model_saves_and_reloads_in_ragsoup_format(tmp_path):
    hf, n_tok = _hf_checkpoint(tmp_path / "hf", n_groups=2, tie=False, vocab=None)
    loaded = load_model(tmp_path / "hf")
    fp = save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "ours", meta={"source": "hf"})
    conf = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert conf["format"] == "ragsoup-mamba2" and conf["model"]["vocab_size"] == n_tok + len(SPECIALS)
    again = load_model(tmp_path / "ours")
    assert again.fingerprint == fp and "external" not in again.meta
    ids = _ids(n_tok + len(SPECIALS), seed=3)
    with torch.no_grad():
        a, _ = loaded.model(ids)
        b, _ = again.model(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    t1, t2 = loaded.tokenizer, again.tokenizer
    assert (t1.pad_id, t1.doc_id, t1.q_id, t1.a_id, t1.eos_id) == (t2.pad_id, t2.doc_id, t2.q_id, t2.a_id, t2.eos_id)
    text = "the lazy dog"
    assert t1.encode(text) == t2.encode(text)
    assert t2.decode([t2.q_id] + t2.encode(text) + [t2.eos_id]) == t1.decode(t1.encode(text))


def _mamba_ssm_checkpoint(tmp_path, ngroups: int = 2, tie: bool = True, mult: int = 20, bias_free_conv=False):
    """Our random model written as mamba_ssm's MambaLMHeadModel would save it (pytorch_model.bin)."""
    tok = _hf_tokenizer()
    n_tok = tok.get_vocab_size()
    padded = -(-n_tok // mult) * mult
    assert padded > n_tok  # the test needs real padding rows (31 words -> 40 rows with mult 20)
    torch.manual_seed(7)
    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=padded, d_state=16, d_conv=4, expand=2, headdim=16,
                       ngroups=ngroups, chunk_size=8, norm_eps=1e-5, tie_embeddings=tie)
    model = Mamba2LM(cfg).eval()
    _jitter(model, seed=7)
    sd = {k: v.clone() for k, v in model.state_dict().items()}  # tied: both names, as torch.save of mamba_ssm has
    ssm_cfg = {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": ngroups, "chunk_size": 8}
    if bias_free_conv:
        ssm_cfg["conv_bias"] = False
        for i in range(cfg.n_layer):
            sd.pop(f"backbone.layers.{i}.mixer.conv1d.bias")
            model.backbone.layers[i].mixer.conv1d.bias.data.zero_()
    conf = {
        "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": n_tok, "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": mult, "tie_embeddings": tie,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    torch.save(sd, tmp_path / "pytorch_model.bin")
    tok.save(str(tmp_path / "tokenizer.json"))
    return model, n_tok, padded


@pytest.mark.parametrize("ngroups,tie,bias_free_conv", [(2, True, False), (1, False, True)])
def test_mamba_ssm_checkpoint_matches_our_logits(tmp_path, ngroups, tie, bias_free_conv):
    ref, n_tok, padded = _mamba_ssm_checkpoint(tmp_path, ngroups=ngroups, tie=tie, bias_free_conv=bias_free_conv)
    loaded = load_model(tmp_path)
    ext = loaded.meta["external"]
    assert ext["layout"] == "mamba_ssm" and ext["config_vocab_size"] == padded and ext["embedding_rows"] == padded
    assert ext["grown_rows"] == 0  # the five specials fit in the padding rows
    assert ext["mean_init_rows"] == list(range(n_tok, n_tok + len(SPECIALS)))
    assert loaded.model.cfg.vocab_size == padded and loaded.model.cfg.ngroups == ngroups
    ids = _ids(n_tok, seed=1)
    with torch.no_grad():
        want, _ = ref(ids)
        got, _ = loaded.model(ids)
    torch.testing.assert_close(got[..., :n_tok], want[..., :n_tok], rtol=1e-5, atol=1e-5)
    assert loaded.fingerprint == fingerprint(tmp_path)
    # the fingerprint covers pytorch_model.bin
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    sd["backbone.norm_f.weight"] = sd["backbone.norm_f.weight"] + 1e-3
    torch.save(sd, tmp_path / "pytorch_model.bin")
    assert fingerprint(tmp_path) != loaded.fingerprint


def test_mamba_ssm_checkpoint_grows_when_specials_do_not_fit(tmp_path):
    tok = _hf_tokenizer()
    n_tok = tok.get_vocab_size()
    ref, _, padded = _mamba_ssm_checkpoint(tmp_path, mult=n_tok + 2)  # pads by 2 rows: 3 specials must grow
    loaded = load_model(tmp_path)
    assert padded == n_tok + 2 and loaded.meta["external"]["grown_rows"] == 3
    assert loaded.model.cfg.vocab_size == n_tok + len(SPECIALS)
    ids = _ids(n_tok, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0][..., :n_tok], ref(ids)[0][..., :n_tok], rtol=1e-5, atol=1e-5)


def test_unknown_layout_raises_listing_the_accepted_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "architectures": ["Something"]}))
    with pytest.raises(RagsoupError) as ei:
        load_model(tmp_path)
    msg = str(ei.value)
    assert "ragsoup-mamba2" in msg and "mamba2" in msg and "ssm_cfg" in msg
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RagsoupError, match="not a Mamba2 model"):
        load_model(tmp_path)


def test_external_without_tokenizer_or_with_unsupported_parts_raises(tmp_path):
    _mamba_ssm_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(RagsoupError, match="no tokenizer.json"):
        load_model(tmp_path)
    _hf_tokenizer().save(str(tmp_path / "tokenizer.json"))
    conf = json.loads((tmp_path / "config.json").read_text())
    for patch, match in [
        ({"ssm_cfg": {"d_state": 16}}, "Mamba1"),  # mamba_ssm's default layer is Mamba1
        ({"ssm_cfg": {**conf["ssm_cfg"], "norm_before_gate": True}}, "norm_before_gate"),
        ({"ssm_cfg": {**conf["ssm_cfg"], "D_has_hdim": True}}, "D_has_hdim"),
        ({"attn_layer_idx": [1]}, "attention"),
        ({"d_intermediate": 64}, "d_intermediate"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**conf, **patch}))
        with pytest.raises(RagsoupError, match=match):
            load_model(tmp_path)
    # a config whose shapes disagree with the weights
    (tmp_path / "config.json").write_text(json.dumps({**conf, "n_layer": 3}))
    with pytest.raises(RagsoupError, match="does not match"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "ssm_cfg": {**conf["ssm_cfg"], "d_state": 8}}))
    with pytest.raises(RagsoupError, match="does not fit"):
        load_model(tmp_path)


def test_transformers_config_with_unsupported_options_raises(tmp_path):
    _hf_checkpoint(tmp_path, n_groups=1, tie=False, vocab=None)
    conf = json.loads((tmp_path / "config.json").read_text())
    for patch, match in [
        ({"use_bias": True}, "use_bias"),
        ({"time_step_limit": [0.0, 0.1]}, "time_step_limit"),
        ({"num_heads": 8}, "num_heads"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**conf, **patch}))
        with pytest.raises(RagsoupError, match=match):
            load_model(tmp_path)
