"""Workload specs: size units, validation messages, the discriminated union, path resolution."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from workloads import (
    DrMemTraceSpec,
    LackeySpec,
    NpySpec,
    PhasesSpec,
    SequentialSpec,
    Size,
    StrideSpec,
    TraceError,
    UniformSpec,
    WorkloadError,
    WorkloadSpec,
    ZipfSpec,
    format_size,
    parse_size,
    parse_workload,
    resolve_paths,
)

HINT = "expected a size like 4K, 2MiB, 20GiB"


@pytest.mark.parametrize("text, expected", [
    ("64", 64), (64, 64), (0, 0), ("0", 0), ("4K", 4096), ("4k", 4096), ("4KiB", 4096),
    ("4 KiB", 4096), ("2MiB", 2 << 20), ("2M", 2 << 20), ("20GiB", 20 << 30),
    ("20G", 20 << 30), ("1T", 1 << 40), ("3TiB", 3 << 40), ("1P", 1 << 50), ("64B", 64),
    ("1.5K", 1536), ("0.5GiB", 1 << 29), (" 8K ", 8192), ("2mib", 2 << 20),
])
def test_sizes_parse_in_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "K", "4X", "4 K B", "-1", -1, "1.1", "0.3K", "4KB",
                                 "4Ki", "4e3", "four", 1.5, 4096.0, True, None, [4], "0x1000"])
def test_garbage_sizes_are_rejected_with_a_clear_message(bad):
    with pytest.raises(ValueError, match=HINT):
        parse_size(bad)


@given(st.integers(0, 1 << 60))
def test_format_size_round_trips(n):
    assert parse_size(format_size(n)) == n


def test_size_annotated_type_in_a_model():
    class M(BaseModel):
        memory: Size

    assert M(memory="2GiB").memory == 2 << 30
    with pytest.raises(ValidationError, match=rf"memory\n  Value error, {HINT}, got '2 gigs'"):
        M(memory="2 gigs")


@pytest.mark.parametrize("data", [
    {"type": "sequential", "accesses": 10, "stpe": 64},
    {"type": "uniform", "accesses": 10, "extra": 1},
    {"type": "zipf", "accesses": 10, "skew": 1.0},
    {"type": "stride", "accesses": 10, "stride": "4K", "wrap": True},
    {"type": "phases", "phases": [{"type": "uniform", "accesses": 1}], "repeat": 2},
    {"type": "phases", "phases": [{"type": "uniform", "accesses": 1, "oops": 0}]},
    {"type": "lackey", "path": "x", "instr": True},
    {"type": "drmemtrace", "path": "x", "threads": 2},
    {"type": "npy", "path": "x", "offset": 0},
])
def test_extra_keys_are_rejected(data):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse_workload(data)


@pytest.mark.parametrize("data, field", [
    ({"type": "sequential", "accesses": 10, "step": "64Q"}, "sequential.step"),
    ({"type": "sequential", "accesses": 10, "start": "lots"}, "sequential.start"),
    ({"type": "sequential", "accesses": 10, "footprint": "1.5"}, "sequential.footprint"),
    ({"type": "uniform", "accesses": 10, "align": "eight"}, "uniform.align"),
    ({"type": "zipf", "accesses": 10, "page": "4 pages"}, "zipf.page"),
    ({"type": "stride", "accesses": 10, "stride": "-4K"}, "stride.stride"),
    ({"type": "lackey", "path": "x", "vcpu_offset": "1 TB"}, "lackey.vcpu_offset"),
    ({"type": "npy", "path": "x", "vcpu_offset": 1.5}, "npy.vcpu_offset"),
    ({"type": "phases", "phases": [{"type": "zipf", "accesses": 1, "footprint": "big"}]},
     "phases.phases.0.zipf.footprint"),
])
def test_bad_sizes_name_the_field(data, field):
    with pytest.raises(ValidationError) as e:
        parse_workload(data)
    text = str(e.value)
    assert f"{field}\n" in text and HINT in text


@pytest.mark.parametrize("data, field, words", [
    ({"type": "sequential", "accesses": 0}, "accesses", "greater than 0"),
    ({"type": "sequential"}, "accesses", "Field required"),
    ({"type": "sequential", "accesses": 1, "step": 0}, "step", "must be > 0"),
    ({"type": "uniform", "accesses": 1, "write_ratio": 1.5}, "write_ratio", "less than or equal"),
    ({"type": "uniform", "accesses": 1, "footprint": 0}, "footprint", "must be > 0"),
    ({"type": "zipf", "accesses": 1, "alpha": 0}, "alpha", "greater than 0"),
    ({"type": "stride", "accesses": 1}, "stride", "Field required"),
    ({"type": "lackey", "path": "x", "limit": 0}, "limit", "greater than 0"),
    ({"type": "phases", "phases": []}, "phases", "at least 1 item"),
])
def test_out_of_range_values_name_the_field(data, field, words):
    with pytest.raises(ValidationError) as e:
        parse_workload(data)
    assert f".{field}\n" in str(e.value) and words in str(e.value)


def test_unknown_type_is_rejected():
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_workload({"type": "random-walk", "accesses": 1})


def test_union_selects_the_model_and_applies_defaults():
    s = parse_workload({"type": "sequential", "accesses": 5, "footprint": "1G"})
    assert isinstance(s, SequentialSpec)
    assert (s.start, s.step, s.footprint, s.write_ratio) == (0, 64, 1 << 30, 0.0)
    z = parse_workload({"type": "zipf", "accesses": 5})
    assert isinstance(z, ZipfSpec) and (z.alpha, z.page, z.footprint) == (1.0, 4096, None)
    assert parse_workload({"type": "uniform", "accesses": 1}).align == 8
    assert isinstance(parse_workload({"type": "stride", "accesses": 1, "stride": 8}), StrideSpec)
    lk = parse_workload({"type": "lackey", "path": "t.gz"})
    assert isinstance(lk, LackeySpec) and (lk.instructions, lk.vcpu_offset, lk.limit) == (
        False, 0, None)
    assert isinstance(parse_workload({"type": "drmemtrace", "path": "d"}), DrMemTraceSpec)
    assert isinstance(parse_workload({"type": "npy", "path": "a.npy"}), NpySpec)


def test_workload_spec_is_usable_as_a_field_and_round_trips_through_json():
    class Config(BaseModel):
        workload: WorkloadSpec

    c = Config.model_validate({"workload": {"type": "phases", "phases": [
        {"type": "zipf", "accesses": 10, "alpha": 1.2}, {"type": "lackey", "path": "a"}]}})
    assert isinstance(c.workload, PhasesSpec)
    again = Config.model_validate_json(c.model_dump_json())
    assert again == c
    schema = Config.model_json_schema()
    assert "discriminator" in str(schema)


def test_every_field_has_a_description():
    for model in (SequentialSpec, UniformSpec, ZipfSpec, StrideSpec, PhasesSpec, LackeySpec,
                  DrMemTraceSpec, NpySpec):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name}"


def test_resolve_paths_makes_relative_trace_paths_relative_to_base(tmp_path):
    spec = parse_workload({"type": "phases", "phases": [
        {"type": "lackey", "path": "traces/a.gz"}, {"type": "npy", "path": "/abs/b.npy"},
        {"type": "uniform", "accesses": 1}]})
    out = resolve_paths(spec, tmp_path)
    assert out.phases[0].path == str(tmp_path / "traces/a.gz")
    assert out.phases[1].path == "/abs/b.npy"
    assert spec.phases[0].path == "traces/a.gz"  # the original is unchanged


def test_trace_error_format_attributes_and_pickling():
    e = TraceError(Path("/x/y.gz"), "truncated gzip file")
    assert str(e) == "/x/y.gz: truncated gzip file"
    assert (e.path, e.message) == ("/x/y.gz", "truncated gzip file")
    assert isinstance(e, ValueError) and isinstance(e, WorkloadError)
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), back.path, back.message, str(back)) == (TraceError, e.path, e.message,
                                                                str(e))


def test_uniform_spec_builds_with_keyword_defaults():
    (s,) = UniformSpec(accesses=3).build(1, 0, 4096)
    assert s.chunk == 1 << 16 and s.total == 3


def test_shared_frames_touches_every_page_once_per_pass_split_over_the_vcpus():
    from workloads import SharedFramesSpec

    spec = parse_workload({"type": "shared_frames", "frames": 3, "mappings_per_frame": 5,
                           "start": "1M", "passes": 2})
    assert isinstance(spec, SharedFramesSpec) and spec.pages == 15
    assert [spec.frame_of(p) for p in range(6)] == [0, 1, 2, 0, 1, 2]
    streams = spec.build(4, 0, 1 << 30, 3)
    pages = []
    for v, s in enumerate(streams):
        got = [int(a) for addr, kind in s for a in addr]
        assert s.total == len(got)
        mine = [(1 << 20) + p * 4096 for p in range(v, 15, 4)]
        assert got == mine * 2  # in increasing order, twice
        pages += mine
    assert sorted(pages) == [(1 << 20) + p * 4096 for p in range(15)]
    with pytest.raises(WorkloadError, match="beyond the guest memory"):
        spec.build(1, 0, (1 << 20) + 14 * 4096, 16)
    with pytest.raises(ValidationError):
        parse_workload({"type": "shared_frames", "frames": 0, "mappings_per_frame": 5})
