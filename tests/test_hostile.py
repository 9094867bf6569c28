"""Files a stranger hands over: strings that name modules, tensors that lie about their size, absurd
architectures and counts, outputs aimed at the model itself; and a fuzz of saved arguments."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import fit_args, vaekit
from vaekit.checkpoint import load_model, read_checkpoint

V0_2 = Path(__file__).parent / "fixtures" / "v0_2"
CEILING = 3 << 30  # bytes of data segment a subprocess may use: imports and a tiny model take about 1.3 GB


def sentinel_module(folder: Path) -> tuple[str, Path]:
    """A module on ``folder`` that leaves a marker file when imported: the proof that nothing imported it."""
    marker = folder / "imported"
    (folder / "vaekit_probe_target.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    return "vaekit_probe_target", marker


def edited_export(folder: Path, edit) -> Path:
    shutil.copytree(V0_2 / "audio-export", folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def edited_checkpoint(path: Path, edit) -> Path:
    checkpoint = torch.load(V0_2 / "audio.ckpt", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


def vaekit_limited(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`vaekit ARGS` as a subprocess whose memory is capped at CEILING: an attempt to allocate gigabytes fails
    there instead of taking the machine."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CEILING, CEILING))

    return subprocess.run(
        [sys.executable, "-m", "vaekit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **(env or {})},
        timeout=300,
    )


def assert_one_line_refusal(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vaekit: error:") and expected in last, last


# ------------------------------------------------------------------ 1. a string that names a module


@pytest.mark.parametrize("form", ["export", "checkpoint", "resume"])
def test_a_string_where_a_class_goes_imports_nothing(form, tmp_path, monkeypatch):
    module, marker = sentinel_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    if form == "export":
        model = edited_export(tmp_path / "exp", lambda c: c["model_args"].update(beta=f"{module}.X"))
    else:
        model = edited_checkpoint(tmp_path / "m.ckpt", lambda c: c["hyper_parameters"].update(beta=f"{module}.X"))
    if form == "resume":
        argv = fit_args("configs/audio/tiny.yaml", tmp_path / "run", "--ckpt_path", str(model))
    else:
        argv = ["sample", str(model), "--num", "1", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"beta: .* is none of .*BetaSchedule"):
        vaekit(*argv)
    assert module not in sys.modules and not marker.exists()


def test_the_zen_of_python_stays_unimported(tmp_path):
    """The outside review's probe, as it was: ``this.X`` printed the Zen of Python on `vaekit sample`."""
    model = edited_export(tmp_path / "exp", lambda c: c["model_args"].update(beta="this.X"))
    code = f"import sys\nfrom vaekit.checkpoint import load_model\ntry:\n    load_model({str(model)!r})\nexcept ValueError:\n    pass\nprint('this' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "Beautiful is better than ugly" not in proc.stdout


# ------------------------------------------------------------------ 2, 3. sizes that lie


def test_a_stride_zero_tensor_is_refused_before_it_expands(tmp_path):
    """4 bytes on disk that read as a 45000 x 45000 tensor (8 GB) once anything touches them all."""
    lying = torch.zeros(1).as_strided((45000, 45000), (0, 0))
    model = edited_checkpoint(tmp_path / "m.ckpt", lambda c: c["state_dict"].update({"prior.bomb": lying}))
    assert model.stat().st_size < 1 << 20
    proc = vaekit_limited("sample", model, "--num", "1", "--out", tmp_path / "out")
    assert_one_line_refusal(proc, "claim more data than the file stores")
    # Overlapping views hidden in the optimiser state too.
    overlapping = torch.arange(19.0).as_strided((10, 10), (1, 1))  # 100 values over 19 stored
    deep = edited_checkpoint(tmp_path / "o.ckpt", lambda c: c.update(optimizer_states=[{"state": {0: overlapping}}]))
    with pytest.raises(ValueError, match=r"optimizer_states\[0\]\.state\.0 \(10, 10\)"):
        read_checkpoint(deep)


@pytest.mark.parametrize("form", ["export", "checkpoint"])
def test_an_architecture_larger_than_its_weights_is_refused_before_allocation(form, tmp_path):
    if form == "export":
        model = edited_export(tmp_path / "exp", lambda c: c["model_args"].update(hidden=1_000_000))
    else:
        model = edited_checkpoint(tmp_path / "m.ckpt", lambda c: c["hyper_parameters"].update(hidden=1_000_000))
    proc = vaekit_limited("sample", model, "--num", "1", "--out", tmp_path / "out")
    assert_one_line_refusal(proc, "describe a model of 1,")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["model_args"].update(hidden=-5), "describe"),  # a negative width: no weights fit it
        (lambda c: c["model_args"].update(hidden=10**40), "whole number of at most"),
        (lambda c: c["model_args"].update(latent_dim="4"), "expected a whole number"),
        (lambda c: c["model_args"].update(lr=float("nan")), "expected a finite number"),
        (lambda c: c["model_args"].update(bogus=1), "not an argument of AudioVAE"),
        (lambda c: c.update(model_args=[1, 2]), "expected an object"),
        (lambda c: c["spec"].update(n_mels=True), "expected a whole number"),
        (lambda c: c["spec"].update(extra=1), "not a field of AudioSpec"),
        (lambda c: c["model_args"].update(channels="x" * 1_000_000), "1000002 characters"),
    ],
    ids=["negative", "huge-int", "string-int", "nan", "unknown-key", "list-args", "bool-dim", "spec-key", "1MB"],
)
def test_malformed_saved_arguments_get_one_short_line(edit, expected, tmp_path):
    model = edited_export(tmp_path / "exp", edit)
    with pytest.raises(SystemExit, match=expected) as refused:
        vaekit("sample", model, "--num", "1", "--out", tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and len(message) < 2000  # a 1 MB string is never echoed whole


def test_deeply_nested_json_gets_one_line(tmp_path):
    model = edited_export(tmp_path / "exp", lambda c: None)
    text = (model / "config.json").read_text().rstrip()[:-1] + ', "extra": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001
    (model / "config.json").write_text(text)
    with pytest.raises(SystemExit, match=r"config\.json: not valid JSON \(RecursionError"):
        vaekit("sample", model, "--num", "1", "--out", tmp_path / "out")


# ------------------------------------------------------------------ 4. counts that would fill the machine


def test_a_billion_samples_are_refused_up_front_with_the_estimate(tmp_path):
    proc = vaekit_limited("sample", V0_2 / "audio.ckpt", "--num", "1000000000", "--out", tmp_path / "out")
    assert_one_line_refusal(proc, "--num 1,000,000,000 would hold about")
    assert "ask for at most" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 5. outputs aimed at the model


def test_file_outputs_never_replace_the_model_or_an_existing_file(tmp_path):
    model = tmp_path / "m.ckpt"
    shutil.copy(V0_2 / "audio.ckpt", model)
    before = model.read_bytes()
    for command in ("evaluate", "score"):  # encode writes --out with .npz: its own case is --plot, below
        with pytest.raises(SystemExit, match="would overwrite the model"):
            vaekit(command, model, "--out", model, "--overwrite")
    assert model.read_bytes() == before
    existing = tmp_path / "eval.json"
    existing.write_text("mine")
    with pytest.raises(SystemExit, match="already exists; pass --overwrite"):
        vaekit("evaluate", model, "--iw-samples", "0", "--max-examples", "2", "--data-root", "demo:audio",
               "--out", existing)  # fmt: skip
    assert existing.read_text() == "mine"
    vaekit("evaluate", model, "--iw-samples", "0", "--max-examples", "2", "--data-root", "demo:audio",
           "--out", existing, "--overwrite")  # fmt: skip
    assert json.loads(existing.read_text())["num_examples"] == 2
    with pytest.raises(SystemExit, match="would overwrite the model"):  # encode's .npz and its plot too
        vaekit("encode", model, "--out", tmp_path / "z", "--plot", model)


def test_folder_outputs_never_delete_the_model_folder(tmp_path):
    exported = tmp_path / "exp"
    shutil.copytree(V0_2 / "audio-export", exported)
    for out in (exported, tmp_path):  # the folder itself, or a folder that holds it
        with pytest.raises(SystemExit, match="would overwrite the model"):
            vaekit("sample", exported, "--num", "1", "--out", out, "--overwrite")
    with pytest.raises(SystemExit, match="would overwrite the model"):  # a file of the exported folder
        vaekit("evaluate", exported, "--out", exported / "config.json", "--overwrite")
    assert load_model(exported)[0] is not None


# ------------------------------------------------------------------ fuzz


FUZZ = textwrap.dedent(
    """
    import copy, json, random, shutil, sys, tempfile
    from pathlib import Path
    import torch
    from vaekit.checkpoint import load_model
    from vaekit.cli import USER_ERRORS

    random.seed(0)
    source, module, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ckpt = torch.load(source / "audio.ckpt", weights_only=True)
    config = json.loads((source / "audio-export" / "config.json").read_text())
    nasty = [
        None, True, -1, 0, 2**31, 10**40, -(10**9), 1e308, float("nan"), float("inf"), "", "x" * 100000,
        f"{module}.X", f"{module}.Model", "os.system", [], [1] * 5, [[[[]]]], {}, {"class_path": f"{module}.X"},
        {"init_args": {}}, {"schedule": f"{module}.X"}, {"max": -1}, 3.5, "gaussian", [f"{module}.X"],
    ]

    def paths(value, prefix=()):
        yield prefix
        if isinstance(value, dict):
            for k, v in value.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from paths(v, prefix + (i,))

    def mutate(document, keys):
        document = copy.deepcopy(document)
        for _ in range(random.randint(1, 3)):
            path = random.choice([p for key in keys for p in paths(document[key], (key,)) if len(p) > 1] or [(keys[0],)])
            parent = document
            for step in path[:-1]:
                parent = parent[step]
            choice = random.random()
            if choice < 0.1 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif choice < 0.2 and isinstance(parent, dict):
                parent[random.choice(["extra", "class_path", "_instantiator", "__path__"])] = random.choice(nasty)
            else:
                parent[path[-1]] = copy.deepcopy(random.choice(nasty))
        return document

    work = Path(tempfile.mkdtemp())
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(rounds):
        if i % 2:
            folder = work / f"e{i}"
            shutil.copytree(source / "audio-export", folder)
            (folder / "config.json").write_text(json.dumps(mutate(config, ["model_args", "data_args", "spec"])))
            target = folder
        else:
            target = work / f"c{i}.ckpt"
            mutated = mutate({"h": ckpt["hyper_parameters"], "d": ckpt["datamodule_hyper_parameters"],
                              "v": ckpt["vaekit"]}, ["h", "d", "v"])
            torch.save({**ckpt, "hyper_parameters": mutated["h"], "datamodule_hyper_parameters": mutated["d"],
                        "vaekit": mutated["v"]}, target)
        try:
            load_model(target)
            outcomes["loaded"] += 1
        except USER_ERRORS as err:
            assert len(str(err)) < 5000, (i, str(err)[:300])
            outcomes["refused"] += 1
        assert module not in sys.modules, i
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    print(json.dumps(outcomes))
    """
)


def test_fuzzed_saved_arguments_load_or_get_a_short_error_and_import_nothing(tmp_path):
    """300 random mutations of a checkpoint's and an exported folder's saved arguments, in one process under the
    memory ceiling: each loads or raises an error the CLI prints as one line; none imports the module named."""
    module, marker = sentinel_module(tmp_path)
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CEILING, CEILING))

    proc = subprocess.run(
        [sys.executable, str(script), str(V0_2), module, "300"],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{Path.cwd()}"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["loaded"] + outcomes["refused"] == 300 and outcomes["refused"] > 100, outcomes
    assert not marker.exists()


# ------------------------------------------------------------------ weaker probes: one line each


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 60-byte PNG whose header claims 900 M pixels: PIL's decompression-bomb guard refuses it on open."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_image_gets_one_line(image_ckpt, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(SystemExit, match=r"bomb\.png: not a readable image .*decompression bomb"):
        vaekit("reconstruct", image_ckpt, "--input", bomb, "--out", tmp_path / "out")


@pytest.fixture(scope="module")
def text_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    vaekit(*fit_args("configs/text/tiny.yaml", root / "run", "--trainer.max_steps", "2", "--samples.num", "0"))
    vaekit("export", root / "run" / "checkpoints" / "last.ckpt", "--out", root / "exp", "--num", "0")
    return root / "exp"


def test_absurd_decoding_flags_are_refused_up_front(text_export, tmp_path):
    for flag, value in (("--max-length", "1000000000"), ("--beam-width", "1000000")):
        with pytest.raises(SystemExit, match=r"--max-length must be 0\.\.4096 and --beam-width at most 256"):
            vaekit("sample", text_export, "--num", "2", "--strategy", "beam", flag, value, "--out", tmp_path / flag)
        assert not (tmp_path / flag).exists()


def test_a_non_utf8_or_huge_sentence_argument_gets_one_line(text_export, tmp_path):
    undecodable = b"caf\xff\xfe".decode("utf-8", "surrogateescape")  # how Python hands over such argv bytes
    with pytest.raises(SystemExit, match="is not UTF-8 text"):
        vaekit("interpolate", text_export, "--a", undecodable, "--b", "the cat", "--out", tmp_path / "a")
    vaekit("reconstruct", text_export, "--input", "word " * 50_000, "--out", tmp_path / "b")  # truncated, no crash
    assert (tmp_path / "b" / "reconstructions.txt").is_file()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda text: "{ not json", r"tokenizer\.json\) does not load"),
        (lambda text: text.replace('"the":', '"thee":', 1), "has a vocabulary of"),
    ],
    ids=["unparsable", "other-vocabulary"],
)
def test_a_tokenizer_that_is_not_the_models_is_refused_by_name(text_export, tmp_path, edit, expected):
    folder = tmp_path / "exp"
    shutil.copytree(text_export, folder)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(edit(tokenizer.read_text()))
    with pytest.raises(SystemExit, match=expected):
        vaekit("sample", folder, "--num", "1", "--out", tmp_path / "out")


@pytest.mark.parametrize(
    "content, expected",
    [("\xff\xfe", "normalisation.json: not valid JSON"), ("[1, 2]", "normalisation.json: expected a JSON object")],
)
def test_broken_normalisation_statistics_name_their_file(tmp_path, content, expected):
    folder = edited_export(tmp_path / "exp", lambda c: None)
    (folder / "normalisation.json").write_text(content)
    with pytest.raises(SystemExit, match=expected):
        vaekit("sample", folder, "--num", "1", "--out", tmp_path / "out")
    statistics = json.loads((V0_2 / "audio-export" / "normalisation.json").read_text())
    statistics["mel_std"] = statistics["mel_std"][:-1]  # one bin short of the features
    (folder / "normalisation.json").write_text(json.dumps(statistics))
    with pytest.raises(SystemExit, match=r"normalisation\.json\) give 32 means and 31"):
        vaekit("sample", folder, "--num", "1", "--out", tmp_path / "out")
