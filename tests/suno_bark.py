"""Suno's own ``bark`` 0.1.5 as the reference, running the same random weights as our core.

Suno's package is imported from its wheel (never installed, never a runtime dependency): its
``encodec`` import needs ``torchaudio`` only for file I/O, so a stand-in is present while it
imports. The tiny transformers ``BarkModel`` is written out as Suno's checkpoint dicts
(``model_args``, ``model``) and loaded by Suno's own ``_load_model`` into
``bark.generation.models``; its EnCodec becomes an ``encodec`` package model with the same weights.
Greedy on both sides: Suno's ``torch.multinomial`` and our sampling noise are replaced by argmax,
everything else (temperatures, the end-of-speech arithmetic, windows, histories) untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
import zipfile
from pathlib import Path

import torch
from torch import nn

# transformers' Bark names -> Suno's (``bark/model.py``, ``bark/model_fine.py``).
_RENAMES = (
    ("input_embeds_layers.", "transformer.wtes."),
    ("input_embeds_layer.", "transformer.wte."),
    ("position_embeds_layer.", "transformer.wpe."),
    ("layernorm_final.", "transformer.ln_f."),
    ("layers.", "transformer.h."),
    ("layernorm_1.", "ln_1."),
    ("layernorm_2.", "ln_2."),
    ("att_proj.", "c_attn."),
    ("attn.out_proj.", "attn.c_proj."),
    ("in_proj.", "c_fc."),
    ("mlp.out_proj.", "mlp.c_proj."),
)


def import_suno(wheel: Path, folder: Path) -> types.ModuleType:
    """``bark.generation`` from the wheel's Python files, unpacked into ``folder``."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith("bark/") and member.endswith(".py"):
                archive.extract(member, folder)
    sys.path.insert(0, str(folder))
    try:
        with torchaudio_stand_in():
            return importlib.import_module("bark.generation")
    finally:
        sys.path.remove(str(folder))


@contextlib.contextmanager
def torchaudio_stand_in():
    """An empty ``torchaudio`` while ``encodec`` (which imports it for file I/O only) is imported."""
    import transformers  # noqa: F401 - before the stand-in, so it never sees a torchaudio

    stand_in = types.ModuleType("torchaudio")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    had = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = stand_in
    try:
        yield
    finally:
        if had is None:
            del sys.modules["torchaudio"]
        else:
            sys.modules["torchaudio"] = had


def _suno_state(part: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, value in part.state_dict().items():
        if name.endswith("attn.bias"):
            continue  # the causal mask buffer: Suno makes its own
        for old, new in _RENAMES:
            name = name.replace(old, new)
        state[name] = value.clone()
    return state


def _model_args(part: nn.Module, fine: bool) -> dict:
    config = part.config
    args = {
        "block_size": config.block_size,
        "input_vocab_size": config.input_vocab_size,
        "output_vocab_size": config.output_vocab_size,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_embd": config.hidden_size,
        "dropout": 0.0,
        "bias": config.bias,
    }
    if fine:
        args.update(n_codes_total=config.n_codes_total, n_codes_given=config.n_codes_given)
    return args


def load_into_suno(generation: types.ModuleType, bark, tokenizer_dir: Path, folder: Path) -> None:
    """Put ``bark``'s weights into Suno's ``models`` through Suno's own loader."""
    parts = {"text": bark.semantic, "coarse": bark.coarse_acoustics, "fine": bark.fine_acoustics}
    original = generation.BertTokenizer
    # Suno's loader fetches bert-base-multilingual-cased; the hub repo's tokenizer is the same one.
    generation.BertTokenizer = types.SimpleNamespace(
        from_pretrained=lambda _name: original.from_pretrained(str(tokenizer_dir))
    )
    try:
        for kind, part in parts.items():
            path = folder / f"{kind}.pt"
            checkpoint = {
                "model_args": _model_args(part, kind == "fine"),
                "model": _suno_state(part),
                "best_val_loss": torch.tensor(0.0),
            }
            torch.save(checkpoint, path)
            generation.models[kind] = generation._load_model(str(path), "cpu", model_type=kind)
    finally:
        generation.BertTokenizer = original
    generation.models["codec"] = suno_codec(bark.codec_model)


def suno_codec(hf_codec: nn.Module) -> nn.Module:
    """An ``encodec`` package model (what Suno decodes with, and voice-cloning tools encode with)
    holding transformers' EnCodec weights."""
    with torchaudio_stand_in():
        from encodec import EncodecModel
        from encodec.modules import SEANetDecoder, SEANetEncoder
        from encodec.quantization import ResidualVectorQuantizer

    config = hf_codec.config
    shape = {
        "channels": config.audio_channels,
        "dimension": config.hidden_size,
        "n_filters": config.num_filters,
        "n_residual_layers": config.num_residual_layers,
        "ratios": list(config.upsampling_ratios),
        "norm": config.norm_type,
        "kernel_size": config.kernel_size,
        "last_kernel_size": config.last_kernel_size,
        "residual_kernel_size": config.residual_kernel_size,
        "dilation_base": config.dilation_growth_rate,
        "causal": config.use_causal_conv,
        "pad_mode": config.pad_mode,
        "true_skip": not config.use_conv_shortcut,
        "compress": config.compress,
        "lstm": config.num_lstm_layers,
    }
    n_q = len(hf_codec.quantizer.layers)
    quantizer = ResidualVectorQuantizer(config.hidden_size, n_q=n_q, bins=config.codebook_size)
    model = EncodecModel(
        SEANetEncoder(**shape),
        SEANetDecoder(**shape),
        quantizer,
        list(config.target_bandwidths),
        config.sampling_rate,
        config.audio_channels,
        normalize=config.normalize,
    )
    model.set_target_bandwidth(6.0)  # as Suno's _load_codec_model: 8 codebooks
    with torch.no_grad():
        _copy_layers(hf_codec.decoder, model.decoder)
        _copy_layers(hf_codec.encoder, model.encoder)
        for hf_layer, layer in zip(hf_codec.quantizer.layers, model.quantizer.vq.layers):
            layer._codebook.embed.copy_(hf_layer.codebook.embed)
            layer._codebook.inited.fill_(1)
    return model.eval()


def _copy_layers(source: nn.Module, target: nn.Module) -> None:
    """Copy convolution and LSTM weights between two decoders (or encoders) of the same
    architecture, in order."""
    kinds = (nn.Conv1d, nn.ConvTranspose1d, nn.LSTM)
    sources = [m for m in source.modules() if isinstance(m, kinds)]
    targets = [m for m in target.modules() if isinstance(m, kinds)]

    def kind(module: nn.Module) -> type:  # a weight-normed layer's class is a parametrized subclass
        return next(k for k in (nn.ConvTranspose1d, nn.Conv1d, nn.LSTM) if isinstance(module, k))

    assert [kind(m) for m in sources] == [kind(m) for m in targets], "different decoders"
    for src, dst in zip(sources, targets):
        if isinstance(src, nn.LSTM):
            dst.load_state_dict(src.state_dict())
            continue
        dst.bias.copy_(src.bias)
        weight = src.parametrizations.weight
        dst.weight_g.copy_(weight.original0)
        dst.weight_v.copy_(weight.original1)


@contextlib.contextmanager
def greedy_suno():
    """Suno's ``torch.multinomial`` as argmax (Suno has no greedy switch)."""
    original = torch.multinomial
    torch.multinomial = lambda probs, num_samples: probs.argmax(-1, keepdim=True)
    try:
        yield
    finally:
        torch.multinomial = original
