"""Published Mamba2 checkpoints: load a ``mamba_ssm`` or ``transformers`` directory as a ragsoup model.

Three directory layouts are accepted by ``checkpoint.load_model`` (told apart by config.json):

* ragsoup    ``{"format": "ragsoup-mamba2", "model": {...}}`` + model.safetensors + tokenizer.json
* transformers ``{"model_type": "mamba2", "hidden_size": ..., ...}`` + model.safetensors (or shards, or
             pytorch_model.bin) + tokenizer.json; names ``backbone.embeddings.weight``, ``backbone.layers.N.*``
* mamba_ssm  ``{"d_model": ..., "n_layer": ..., "ssm_cfg": {"layer": "Mamba2", ...}, ...}`` + pytorch_model.bin
             (or model.safetensors) + tokenizer.json; ``MambaLMHeadModel`` names (the same as ours)

Both external layouts map onto ``Mamba2LM`` exactly (same block structure: pre-norm residual, gated RMSNorm with
the gate applied *before* normalisation and group size d_inner/ngroups, D per head, no in/out_proj bias).
Anything the model cannot express (Mamba1 layers, attention layers, MLPs, projection biases, dt limits,
D per channel, norm_before_gate=True, LayerNorm) is refused with a RagsoupError instead of loading wrongly.

Such a directory's tokenizer lacks ragsoup's special tokens: they are added to it, and the embedding (and
lm_head when untied) grows if their ids pass its last row. Every row a new special token lands on (grown, or
one of the never-used rows mamba_ssm pads its vocabulary with) starts as the mean of the tokenizer's own rows.
What was done is recorded in ``Loaded.meta["external"]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ragsoup.checkpoint import BACKGROUND_FILE
from ragsoup.errors import RagsoupError
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import SPECIALS, HFTokenizer

LAYOUTS_HELP = (
    "accepted layouts: (1) a ragsoup checkpoint (config.json with \"format\": \"ragsoup-mamba2\"), "
    "(2) a transformers Mamba2 checkpoint (config.json with \"model_type\": \"mamba2\"), "
    "(3) a mamba_ssm MambaLMHeadModel checkpoint (config.json with \"ssm_cfg\": {\"layer\": \"Mamba2\", ...})"
)

# transformers' Mamba2Config defaults (transformers 4.44 .. 5.x), used for keys a config.json leaves out
HF_DEFAULTS = dict(
    num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128, num_hidden_layers=64,
    layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, n_groups=8, use_bias=False, use_conv_bias=True,
    hidden_act="silu", time_step_limit=(0.0, math.inf), chunk_size=256, tie_word_embeddings=False,
)
# mamba_ssm defaults: MambaConfig (models/config_mamba.py) and Mamba2.__init__ (modules/mamba2.py)
SSM_TOP_DEFAULTS = dict(
    d_intermediate=0, attn_layer_idx=[], rms_norm=True, pad_vocab_size_multiple=8, tie_embeddings=True,
)
MAMBA2_DEFAULTS = dict(
    d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1, D_has_hdim=False, rmsnorm=True,
    norm_before_gate=False, dt_limit=(0.0, math.inf), bias=False, conv_bias=True, chunk_size=256,
)
# Mamba2 arguments that only affect initialisation or which kernel runs: safe to ignore
MAMBA2_IGNORED = {
    "layer", "conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "use_mem_eff_path",
    "learnable_init_states", "activation", "sequence_parallel", "process_group",
}
MAMBA_SSM_NORM_EPS = 1e-5  # MixerModel's norm_epsilon default and Mamba2's RMSNormGated(eps=1e-5), both fixed


def detect_layout(conf: object) -> str:
    """'ragsoup', 'transformers' or 'mamba_ssm' from a parsed config.json; RagsoupError for anything else."""
    if isinstance(conf, dict):
        if conf.get("format") == "ragsoup-mamba2":
            return "ragsoup"
        if conf.get("model_type") == "mamba2":
            return "transformers"
        if "ssm_cfg" in conf:
            return "mamba_ssm"
        if conf.get("model_type"):
            raise RagsoupError(f"config.json has model_type {conf.get('model_type')!r}, not a Mamba2 model; {LAYOUTS_HELP}")
    raise RagsoupError(f"config.json is in no layout ragsoup can load; {LAYOUTS_HELP}")


def _json_float(x) -> float:
    """A float as configs write it: 0.1, "Infinity", or transformers 5's {"__float__": "Infinity"}."""
    if isinstance(x, dict) and "__float__" in x:
        x = x["__float__"]
    return float(x)


def _is_default_dt_limit(v) -> bool:
    """True for a dt limit of (0, inf), the no-op default of both transformers and mamba_ssm."""
    if v is None:
        return True
    try:
        lo, hi = (_json_float(x) for x in v)
    except (TypeError, ValueError):
        return False
    return lo == 0.0 and math.isinf(hi) and hi > 0


def _int_expand(expand, d_model: int, where: str) -> int:
    d_inner = expand * d_model
    if int(d_inner) != d_inner or int(expand) != expand:
        raise RagsoupError(f"{where}: expand={expand} is not an integer; ragsoup's Mamba2 needs an integer expand")
    return int(expand)


def config_from_transformers(conf: dict) -> tuple[Mamba2Config, bool]:
    """transformers Mamba2 config.json -> (our config, conv has bias)."""
    c = {**HF_DEFAULTS, **{k: v for k, v in conf.items() if v is not None or k == "time_step_limit"}}
    where = "transformers Mamba2 config"
    if c["use_bias"]:
        raise RagsoupError(f"{where}: use_bias=true (biases on in_proj/out_proj) is not supported")
    if str(c["hidden_act"]) not in ("silu", "swish"):
        raise RagsoupError(f"{where}: hidden_act={c['hidden_act']!r} is not supported (only silu)")
    if not _is_default_dt_limit(c["time_step_limit"]):
        raise RagsoupError(f"{where}: time_step_limit={c['time_step_limit']} clamps dt; only (0, inf) is supported")
    expand = _int_expand(c["expand"], c["hidden_size"], where)
    cfg = Mamba2Config(
        d_model=int(c["hidden_size"]), n_layer=int(c["num_hidden_layers"]), vocab_size=int(c["vocab_size"]),
        d_state=int(c["state_size"]), d_conv=int(c["conv_kernel"]), expand=expand, headdim=int(c["head_dim"]),
        ngroups=int(c["n_groups"]), chunk_size=int(c["chunk_size"]), norm_eps=float(c["layer_norm_epsilon"]),
        tie_embeddings=bool(c["tie_word_embeddings"]),
    )
    if cfg.nheads * cfg.headdim != cfg.d_inner or int(c["num_heads"]) != cfg.nheads:
        raise RagsoupError(
            f"{where}: num_heads={c['num_heads']} x head_dim={cfg.headdim} must equal expand x hidden_size={cfg.d_inner}"
        )
    _check_groups(cfg, where)
    return cfg, bool(c["use_conv_bias"])


def config_from_mamba_ssm(conf: dict) -> tuple[Mamba2Config, bool, int]:
    """mamba_ssm MambaLMHeadModel config.json -> (our config, conv has bias, padded vocab size)."""
    top = {**SSM_TOP_DEFAULTS, **conf}
    where = "mamba_ssm config"
    ssm = dict(top.get("ssm_cfg") or {})
    layer = ssm.get("layer", "Mamba1")  # mamba_ssm's create_block defaults to Mamba1
    if layer != "Mamba2":
        raise RagsoupError(f"{where}: ssm_cfg.layer is {layer!r}; ragsoup loads Mamba2 models only")
    if top.get("attn_layer_idx"):
        raise RagsoupError(f"{where}: attention layers (attn_layer_idx={top['attn_layer_idx']}) are not supported")
    if top.get("d_intermediate"):
        raise RagsoupError(f"{where}: d_intermediate={top['d_intermediate']} (an MLP per block) is not supported")
    if not top.get("rms_norm"):
        raise RagsoupError(f"{where}: rms_norm=false (LayerNorm blocks) is not supported")
    if top.get("bidirectional"):
        raise RagsoupError(f"{where}: bidirectional models are not supported")
    unknown = sorted(set(ssm) - set(MAMBA2_DEFAULTS) - MAMBA2_IGNORED)
    if unknown:
        raise RagsoupError(f"{where}: unknown ssm_cfg keys {unknown}; refusing to guess what they change")
    m = {**MAMBA2_DEFAULTS, **{k: v for k, v in ssm.items() if k in MAMBA2_DEFAULTS}}
    for key, ok, what in [
        ("D_has_hdim", not m["D_has_hdim"], "D per channel"),
        ("rmsnorm", m["rmsnorm"], "an ungated output (no RMSNorm)"),
        ("norm_before_gate", not m["norm_before_gate"], "normalising before the gate"),
        ("bias", not m["bias"], "biases on in_proj/out_proj"),
        ("dt_limit", _is_default_dt_limit(m["dt_limit"]), "a dt clamp"),
    ]:
        if not ok:
            raise RagsoupError(f"{where}: ssm_cfg.{key}={m[key]} ({what}) is not supported")
    d_model = int(top["d_model"])
    expand = _int_expand(m["expand"], d_model, where)
    if m["d_ssm"] is not None and int(m["d_ssm"]) != expand * d_model:
        raise RagsoupError(f"{where}: ssm_cfg.d_ssm={m['d_ssm']} (part gated MLP) is not supported")
    vocab = int(top["vocab_size"])
    mult = int(top.get("pad_vocab_size_multiple") or 1)
    padded = vocab + (mult - vocab % mult) % mult  # as MambaLMHeadModel pads it
    cfg = Mamba2Config(
        d_model=d_model, n_layer=int(top["n_layer"]), vocab_size=padded, d_state=int(m["d_state"]),
        d_conv=int(m["d_conv"]), expand=expand, headdim=int(m["headdim"]), ngroups=int(m["ngroups"]),
        chunk_size=int(m["chunk_size"]), norm_eps=MAMBA_SSM_NORM_EPS, tie_embeddings=bool(top["tie_embeddings"]),
    )
    if cfg.d_inner % cfg.headdim:
        raise RagsoupError(f"{where}: d_inner={cfg.d_inner} is not a multiple of headdim={cfg.headdim}")
    _check_groups(cfg, where)
    return cfg, bool(m["conv_bias"]), padded


def _check_groups(cfg: Mamba2Config, where: str) -> None:
    if cfg.ngroups < 1 or cfg.nheads % cfg.ngroups or cfg.d_inner % cfg.ngroups:
        raise RagsoupError(f"{where}: {cfg.nheads} heads cannot be split into ngroups={cfg.ngroups} groups")


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory: *.safetensors if any, else pytorch_model*.bin."""
    st = sorted(p for p in Path(path).glob("*.safetensors") if p.name != BACKGROUND_FILE)
    return st or sorted(Path(path).glob("pytorch_model*.bin"))


def read_weights(path: Path) -> dict[str, Tensor]:
    """Every tensor of the directory's weight files (shards merged), on the CPU."""
    files = weight_files(path)
    if not files:
        raise RagsoupError(f"no weights in {path}: expected model.safetensors (or shards) or pytorch_model.bin")
    sd: dict[str, Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(f))
            else:
                part = torch.load(f, map_location="cpu", weights_only=True)
                if isinstance(part, dict) and isinstance(part.get("model"), dict):
                    part = part["model"]  # a training checkpoint {"model": state_dict, ...}
        except Exception as exc:  # corrupt file, pickle refused by weights_only, ...
            raise RagsoupError(f"cannot read weights {f}: {exc}") from exc
        if not isinstance(part, dict):
            raise RagsoupError(f"weights {f} hold no state dict")
        sd.update(part)
    return sd


def _to_our_names(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers names -> ours: only the embedding differs (``embeddings`` vs mamba_ssm's ``embedding``)."""
    return {k.replace("backbone.embeddings.", "backbone.embedding.", 1): v for k, v in sd.items()}


def _open_tokenizer(path: Path):
    tj = Path(path) / "tokenizer.json"
    if not tj.is_file():
        raise RagsoupError(
            f"{path} has no tokenizer.json: put the model's Hugging Face fast tokenizer there (for the state-spaces "
            "mamba2 models, EleutherAI/gpt-neox-20b's tokenizer.json); ragsoup adds its special tokens "
            f"{' '.join(SPECIALS)} to it"
        )
    from tokenizers import Tokenizer as _HF

    try:
        return _HF.from_file(str(tj))
    except Exception as exc:
        raise RagsoupError(f"cannot read tokenizer {tj}: {exc}") from exc


@torch.no_grad()
def _grow_rows(model: Mamba2LM, rows: int) -> None:
    """Give the embedding (and an untied lm_head) ``rows`` rows; new rows are zero until set by the caller."""
    emb = model.backbone.embedding
    old = emb.weight.shape[0]
    if rows <= old:
        return
    w = torch.zeros(rows, emb.weight.shape[1], dtype=emb.weight.dtype, device=emb.weight.device)
    w[:old] = emb.weight
    new_emb = torch.nn.Embedding(rows, w.shape[1], dtype=w.dtype, device=w.device)
    new_emb.weight.copy_(w)
    model.backbone.embedding = new_emb
    head = torch.nn.Linear(w.shape[1], rows, bias=False, dtype=w.dtype, device=w.device)
    if model.cfg.tie_embeddings:
        head.weight = new_emb.weight
    else:
        hw = torch.zeros_like(w)
        hw[:old] = model.lm_head.weight
        head.weight.copy_(hw)
    model.lm_head = head
    model.cfg.vocab_size = rows


@torch.no_grad()
def add_special_tokens(model: Mamba2LM, hf_tok) -> tuple[HFTokenizer, dict]:
    """Add ragsoup's special tokens to a `tokenizers` tokenizer and fit the model's vocabulary to it.

    Returns the wrapped tokenizer and a record of what changed (for ``Loaded.meta``).
    """
    from tokenizers import AddedToken

    n_tok = hf_tok.get_vocab_size(with_added_tokens=True)
    rows = model.backbone.embedding.weight.shape[0]
    if n_tok > rows:
        raise RagsoupError(
            f"tokenizer.json has {n_tok} tokens but the model's embedding only {rows} rows: wrong tokenizer for this model"
        )
    missing = [s for s in SPECIALS if hf_tok.token_to_id(s) is None]
    hf_tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])
    ids = {s: hf_tok.token_to_id(s) for s in SPECIALS}
    new_ids = sorted(ids[s] for s in missing)
    need = max(ids.values()) + 1
    _grow_rows(model, need)
    if new_ids:  # every row a new token lands on starts at the mean of the tokenizer's own rows
        idx = torch.tensor(new_ids, device=model.device)
        emb = model.backbone.embedding.weight
        emb[idx] = emb[:n_tok].mean(0, keepdim=True).expand(len(new_ids), -1)
        if not model.cfg.tie_embeddings:
            head = model.lm_head.weight
            head[idx] = head[:n_tok].mean(0, keepdim=True).expand(len(new_ids), -1)
    record = {
        "tokenizer_vocab": n_tok,
        "embedding_rows": rows,
        "added_special_tokens": {s: ids[s] for s in missing},
        "grown_rows": max(0, need - rows),
        "mean_init_rows": new_ids,
    }
    return HFTokenizer(hf_tok), record


def load_external(path: Path, conf: dict, device: str | torch.device = "cpu"):
    """Load a transformers or mamba_ssm Mamba2 directory as ``checkpoint.Loaded`` (eval mode, float32)."""
    from ragsoup.checkpoint import Loaded, fingerprint

    path = Path(path)
    layout = detect_layout(conf)
    if layout == "ragsoup":
        raise ValueError("load_external is for external layouts; use checkpoint.load_model")
    hf_tok = _open_tokenizer(path)  # fail early, before reading large weights
    try:
        if layout == "transformers":
            cfg, conv_bias = config_from_transformers(conf)
            declared = cfg.vocab_size
        else:
            cfg, conv_bias, declared = config_from_mamba_ssm(conf)
    except (KeyError, TypeError, ValueError) as exc:
        raise RagsoupError(f"cannot read {layout} config {path / 'config.json'}: missing or bad {exc}") from exc
    sd = _to_our_names(read_weights(path))
    emb = sd.get("backbone.embedding.weight")
    if emb is None:
        raise RagsoupError(f"{path}: weights have no backbone.embedding(s).weight; not a Mamba2 LM checkpoint")
    rows = emb.shape[0]
    cfg.vocab_size = rows  # trust the weights (mamba_ssm pads the config's vocab_size)
    if cfg.tie_embeddings:
        head = sd.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, emb):
            cfg.tie_embeddings = False  # config says tied but the file holds a different head: keep both
            sd["lm_head.weight"] = head
    elif "lm_head.weight" not in sd:
        raise RagsoupError(f"{path}: untied embeddings (config) but the weights have no lm_head.weight")
    if not conv_bias:  # no conv bias == a zero bias in our model
        for i in range(cfg.n_layer):
            w = sd.get(f"backbone.layers.{i}.mixer.conv1d.weight")
            if w is not None:
                sd.setdefault(f"backbone.layers.{i}.mixer.conv1d.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    model = Mamba2LM(cfg)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RagsoupError(f"{layout} checkpoint {path} does not fit its config: {exc}") from exc
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RagsoupError(
            f"{layout} checkpoint {path} does not match a Mamba2 LM: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    model.to(device).eval()
    tok, record = add_special_tokens(model, hf_tok)
    record = {"layout": layout, "config_vocab_size": declared, **record}
    return Loaded(model, tok, path, fingerprint(path), {"external": record})
