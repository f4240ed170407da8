"""A quick, small second start: the first start keeps its int8 weights, the next loads them
directly (no float32 GPT weights, no gate), the same numbers; a damaged or stale cache is made
again; the kernel probes' verdicts are kept the same way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import seeded_speech

from wyoming_bark import int8_cache, precision
from wyoming_bark.loader import load_bark
from wyoming_bark.settings import ModelSettings


def _load(tiny_model, data_dir, **kwargs):
    kwargs = {"precision": "int8", **kwargs}  # auto's choice on the tiny model: test_stage_precision
    return load_bark(
        ModelSettings(model=str(tiny_model), data_dir=data_dir, device="cpu", max_batch=2, **kwargs)
    )


def test_the_second_start_loads_the_kept_int8_weights(tiny_model, tmp_path, caplog):
    caplog.set_level("INFO")
    first = _load(tiny_model, tmp_path)
    assert first.precision == "int8" and "quality gate passed" in caplog.text
    assert "Kept the int8 weights" in caplog.text
    caplog.clear()
    second = _load(tiny_model, tmp_path)
    assert "quality gate" not in caplog.text and "int8 weights loaded from" in caplog.text
    assert second.precision == "int8" and second.self_check.startswith("passed"), second.self_check
    assert isinstance(second.model.coarse_acoustics.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    for name in precision.QUANTIZED:  # the same weights, int8 and float alike
        ours, kept = getattr(first.model, name).state_dict(), getattr(second.model, name).state_dict()
        assert ours.keys() == kept.keys()
        for key, value in ours.items():
            if isinstance(value, tuple):  # packed int8 weight and bias
                assert torch.equal(value[0].int_repr(), kept[key][0].int_repr()), key
                assert value[0].q_scale() == kept[key][0].q_scale(), key
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, kept[key]), key
    codec, kept_codec = first.model.codec_model.state_dict(), second.model.codec_model.state_dict()
    assert all(torch.equal(value, kept_codec[key]) for key, value in codec.items())
    np.testing.assert_array_equal(seeded_speech(first), seeded_speech(second))  # the same audio


def test_a_damaged_or_stale_cache_is_made_again(tiny_model, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO")
    _load(tiny_model, tmp_path)
    (folder,) = (tmp_path / int8_cache.CACHE_DIR).iterdir()
    kept = folder / "semantic.pt"
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept.write_bytes(bytes(data))
    caplog.clear()
    assert _load(tiny_model, tmp_path).precision == "int8"
    assert "semantic.pt is damaged" in caplog.text and "quality gate passed" in caplog.text
    caplog.clear()
    assert _load(tiny_model, tmp_path).precision == "int8" and "int8 weights loaded from" in caplog.text

    monkeypatch.setattr(int8_cache, "FORMAT", int8_cache.FORMAT + 1)  # as a new torch or model would
    caplog.clear()
    _load(tiny_model, tmp_path)
    assert "quality gate passed" in caplog.text
    (now,) = (tmp_path / int8_cache.CACHE_DIR).iterdir()  # the stale one is gone
    assert now != folder and json.loads((now / "manifest.json").read_text())["fingerprint"]["format"] == 2


def test_fp32_keeps_nothing(tiny_model, tmp_path):
    assert _load(tiny_model, tmp_path, precision="fp32").precision == "fp32"
    assert not (tmp_path / int8_cache.CACHE_DIR).exists()


def test_probe_verdicts_are_kept_for_this_machine(tmp_path, monkeypatch):
    """Off x86-64 the int8 engines are probed in child processes; the next start reads the verdicts."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    first = precision.int8_engine(tmp_path)
    assert (tmp_path / precision.PROBES_FILE).is_file()

    def no_child(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(precision.subprocess, "run", no_child)
    assert precision.int8_engine(tmp_path) == first
    stored = json.loads((tmp_path / precision.PROBES_FILE).read_text())
    stored["machine"]["torch"] = "0.0"  # another torch: probed again
    (tmp_path / precision.PROBES_FILE).write_text(json.dumps(stored))
    with pytest.raises(AssertionError, match="probed again"):
        precision.int8_engine(tmp_path)


_PEAK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from wyoming_bark.loader import load_bark
    from wyoming_bark.settings import ModelSettings
    started = time.monotonic()
    load_bark(ModelSettings(model=sys.argv[1], data_dir=Path(sys.argv[2]), device="cpu", self_check="off",
                             precision="int8"))
    status = Path("/proc/self/status").read_text()
    print(int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) // 1024)
    """
)


@pytest.mark.slow
def test_the_second_start_peaks_lower(tmp_path):
    """A Bark with GPTs of some size (8 layers of 512): the second start never holds float32 GPT
    weights, so its peak memory is lower by about their size."""
    from tiny_bark import _write_generation_config, _write_tokenizer
    from transformers import BarkModel

    from wyoming_bark.bench.random_bark import bark_config, fill_codebooks

    model = tmp_path / "model"
    bark = BarkModel(
        bark_config(8, 512, 8, codec={"model_type": "encodec", "num_filters": 4, "hidden_size": 16})
    )
    fill_codebooks(bark)
    bark.save_pretrained(str(model))
    linear = sum(m.weight.numel() for m in bark.modules() if type(m) is torch.nn.Linear) * 4 >> 20
    del bark
    _write_generation_config(model)
    _write_tokenizer(model)

    def peak() -> int:
        done = subprocess.run([sys.executable, "-c", _PEAK, str(model), str(tmp_path / "data")],
                              capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
        return int(done.stdout.split()[-1])

    first, second = peak(), peak()
    assert second < first - linear // 2, (first, second, linear)


def test_servers_sharing_a_data_dir_may_keep_their_weights_at_once(tiny_model, tmp_path, caplog):
    """Two servers on one data volume (examples/scale-out) start together: both convert and keep,
    and what is kept is one whole cache, loadable."""
    import threading

    loaded = _load(tiny_model, tmp_path / "first")
    kept = int8_cache.Int8Cache(tmp_path / "shared", loaded.model_dir, torch.backends.quantized.engine)
    start = threading.Barrier(4)

    def keep() -> None:
        start.wait()
        kept.save(loaded.model, {"semantic": 1.0})

    threads = [threading.Thread(target=keep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "Cannot keep" not in caplog.text
    assert [p.name for p in (tmp_path / "shared" / int8_cache.CACHE_DIR).iterdir()] == [kept.folder.name]
    assert kept.load() is not None
