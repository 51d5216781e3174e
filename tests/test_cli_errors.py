"""Bad input of every kind: exit status 2, one `error:` line naming the file and the field,
no traceback, nothing written."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cfgutil import apply_overrides

GOOD = {
    "name": "bad",
    "machine": {"granule": "4K", "ipa_bits": 40},
    "guest": {"memory": "1GiB", "vcpus": 1, "mapping": "4K"},
    "workload": {"type": "zipf", "accesses": 100, "footprint": "1MiB"},
}


def with_(path: str, value):
    """GOOD with the dotted key ``path`` set to ``value``."""
    return apply_overrides(yaml.safe_load(yaml.safe_dump(GOOD)), {path.replace(".", "__"): value})


# (id, config mapping or raw text, extra CLI args, fragments the error line must contain)
CASES = [
    ("unknown-top-key", {**GOOD, "gust": {}}, [], ["exp.yaml", "gust", "unknown key"]),
    ("unknown-nested-key", with_("guest.memroy", "1G"), [], ["guest.memroy", "unknown key"]),
    ("bad-size", with_("guest.memory", "20XB"), [], ["guest.memory", "expected a size"]),
    ("zero-vcpus", with_("guest.vcpus", 0), [], ["guest.vcpus"]),
    ("bad-granule", with_("machine.granule", "8K"), [], ["machine.granule"]),
    ("ipa-too-small", with_("guest.memory", "2TiB"), [], ["guest.memory", "ipa_bits"]),
    ("mapping-not-of-granule", {**with_("machine.granule", "64K"),
                                "guest": {"memory": "1GiB", "mapping": "2M"}}, [],
     ["guest.mapping", "64K"]),
    ("unknown-workload-type", with_("workload", {"type": "random"}), [], ["workload"]),
    ("missing-workload", {k: v for k, v in GOOD.items() if k != "workload"}, [], ["workload"]),
    ("tlb-page-size", with_("tlb", {"levels": [{"name": "l1", "sets": 4, "ways": 2,
                                                "page_sizes": ["16K"]}]}), [],
     ["tlb.levels.l1.page_sizes"]),
    ("duplicate-tlb-names", with_("tlb", {"levels": [{"name": "l1", "sets": 4, "ways": 2},
                                                     {"name": "l1", "sets": 4, "ways": 2}]}),
     [], ["tlb.levels", "unique"]),
    ("not-a-mapping", "- 1\n- 2\n", [], ["exp.yaml", "mapping"]),
    ("yaml-syntax", "name: [unclosed\n", [], ["exp.yaml", "line"]),
    ("set-without-equals", GOOD, ["--set", "guest.vcpus"], ["--set", "dotted.key=value"]),
    ("set-unknown-key", GOOD, ["--set", "guest.cpus=2"], ["guest.cpus", "unknown key"]),
    ("set-bad-value", GOOD, ["--set", "guest.vcpus=many"], ["guest.vcpus"]),
    ("set-bad-list-index", GOOD, ["--set", "tlb.levels.l9.sets=2"], ["--set", "l9"]),
    ("variant-unknown-key", {**GOOD, "variants": {"v": {"guest.nope": 1}}}, [],
     ["variant v", "guest.nope"]),
    ("placement-unit", with_("guest.placement_unit", "3K"), [], ["guest.placement_unit"]),
    ("cmo-at-fault-shared-lock", with_("hyp.cmo_at", "fault"), ["--set",
                                                                "engine.mmu_lock=shared"],
     ["hyp.cmo_at", "engine.mmu_lock: exclusive"]),
    ("cmo-at-unknown", with_("hyp.cmo_at", "walk"), [], ["hyp.cmo_at"]),
    ("unpopulated-mapping-beyond-backing", with_("guest", {"memory": "1GiB", "mapping": "2M",
                                                           "populated": False}), [],
     ["guest.populated", "2M"]),
    ("overlapping-memslots", with_("guest.memslots", [{"base": 0, "size": "1GiB"},
                                                      {"base": "512MiB", "size": "1GiB"}]),
     [], ["memslots", "overlap"]),
    ("mmio-windows-overlap-memory", {
        "name": "bad", "machine": {"granule": "4K", "ipa_bits": 40}, "hyp": {"mode": "pkvm"},
        "host": {"cpus": 1, "memory": [{"base": "1GiB", "size": "1GiB", "type": "memory"}],
                 "mmio_windows": {"base": "1020MiB", "count": 4, "size": "1MiB",
                                  "stride": "2MiB"}}},
     [], ["host.mmio_windows", "window 2", "overlaps"]),
    ("mmio-windows-overlap-each-other", {
        "name": "bad", "machine": {"granule": "4K", "ipa_bits": 40}, "hyp": {"mode": "pkvm"},
        "host": {"cpus": 1, "memory": [{"base": "1GiB", "size": "1GiB", "type": "memory"}],
                 "mmio_windows": {"base": "4GiB", "count": 4, "size": "8K", "stride": "4K"}}},
     [], ["host.mmio_windows", "stride"]),
]


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def check_error(r, out: Path, fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in r.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert not out.exists(), "nothing may be written on error"


@pytest.mark.parametrize("case_id,cfg,extra,fragments", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("verb", ["run", "validate"])
def test_bad_config_exits_2_with_one_error_line(tmp_path, case_id, cfg, extra, fragments, verb):
    path = tmp_path / "exp.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    out = tmp_path / "out"
    args = [verb, str(path), *extra] + (["--out", str(out)] if verb == "run" else [])
    check_error(run(args, tmp_path), out, fragments)


def test_missing_config_file(tmp_path):
    out = tmp_path / "out"
    check_error(run(["run", str(tmp_path / "nope.yaml"), "--out", str(out)], tmp_path), out,
                ["nope.yaml", "no such file"])


def _gz_truncated(p: Path) -> None:
    data = gzip.compress(b" L 00001000,8\n" * 5000)
    p.write_bytes(data[: len(data) // 2])


TRACE_CASES = [
    ("missing", None, ["missing.lackey", "workload.path"]),
    ("garbage", lambda p: p.write_bytes(bytes(range(256)) * 40), ["trace.lackey"]),
    ("empty", lambda p: p.write_bytes(b""), ["trace.lackey"]),
    ("truncated-gz", _gz_truncated, ["trace.lackey"]),
]


@pytest.mark.parametrize("case_id,make,fragments", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_bad_trace_exits_2_naming_the_trace(tmp_path, case_id, make, fragments):
    name = "missing.lackey" if make is None else "trace.lackey"
    if make is not None:
        make(tmp_path / name)
    cfg = with_("workload", {"type": "lackey", "path": name})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    check_error(run(["run", str(path), "--out", str(out)], tmp_path), out, fragments)


def test_trace_access_outside_guest_memory_names_the_workload(tmp_path):
    (tmp_path / "far.lackey").write_text(" L 7f0000000000,8\n")
    cfg = with_("workload", {"type": "lackey", "path": "far.lackey"})
    cfg["machine"]["ipa_bits"] = 48
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    check_error(run(["run", str(path), "--out", str(out)], tmp_path), out,
                ["exp.yaml", "workload", "outside guest memory", "first_touch"])


def test_unwritable_output_directory(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run(["run", str(path), "--out", str(blocker / "sub"), "--quiet"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["run", "configs/quickstart.yaml", "--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument"),
    (["frobnicate"], "No such command"),
    (["sweep", "configs/quickstart.yaml", "--workers", "many"], "--workers"),
])
def test_usage_errors_are_one_error_line(args, fragment):
    r = run(args, Path(__file__).parents[1])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
