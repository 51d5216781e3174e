"""Every bad trace input raises TraceError naming the path, at build time where cheap, and never
a raw exception while streaming."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from workloads import DrMemTraceSpec, LackeySpec, NpySpec, PhasesSpec, TraceError, UniformSpec

SAMPLE = Path(__file__).parent / "data" / "drmemtrace" / "threadsig.aarch64"
REAL_LACKEY = Path(__file__).parent / "data" / "touch_pages.lackey.gz"
LACKEY_TEXT = b"==1== Lackey\nI  00400000,4\n L 1fff000650,8\n S 04a30010,4\n"
GARBAGE = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))


def _records(*recs: tuple[int, int, int]) -> bytes:
    arr = np.array(list(recs), dtype=[("type", "<u2"), ("size", "<u2"), ("addr", "<u8")])
    return arr.tobytes()


GOOD_RECORDS = _records((25, 0, 5), (22, 0, 1234), (24, 0, 1), (0, 8, 0x1000), (1, 8, 0x2000))


def _thread_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


# Each maker writes a broken input under tmp and returns (spec, offending path).
def lackey_missing(tmp: Path):
    p = tmp / "nope.lackey.gz"
    return LackeySpec(path=str(p)), p


def lackey_empty(tmp: Path):
    p = tmp / "empty.lackey"
    p.write_bytes(b"")
    return LackeySpec(path=str(p)), p


def lackey_binary(tmp: Path):
    p = tmp / "garbage.lackey"
    p.write_bytes(GARBAGE)
    return LackeySpec(path=str(p)), p


def lackey_text_without_accesses(tmp: Path):
    p = tmp / "readme.txt"
    p.write_bytes(b"just some text\nwith lines\n==1== and a valgrind line\n")
    return LackeySpec(path=str(p)), p


def lackey_only_instructions(tmp: Path):
    p = tmp / "ionly.lackey"
    p.write_bytes(b"I  00400000,4\nI  00400004,4\n")
    return LackeySpec(path=str(p)), p  # instructions: false -> nothing to replay


def lackey_truncated_gz(tmp: Path):
    p = tmp / "trunc.lackey.gz"
    p.write_bytes(REAL_LACKEY.read_bytes()[:5000])
    return LackeySpec(path=str(p)), p


def lackey_gzip_garbage(tmp: Path):
    p = tmp / "bad.gz"
    p.write_bytes(b"\x1f\x8b" + GARBAGE)
    return LackeySpec(path=str(p)), p


def lackey_directory(tmp: Path):
    return LackeySpec(path=str(tmp)), tmp


def drm_missing(tmp: Path):
    p = tmp / "no-such-dir"
    return DrMemTraceSpec(path=str(p)), p


def drm_no_zips(tmp: Path):
    (tmp / "trace").mkdir()
    (tmp / "trace" / "notes.txt").write_text("hello")
    return DrMemTraceSpec(path=str(tmp)), tmp


def drm_zip_without_chunks(tmp: Path):
    p = tmp / "drmemtrace.app.1234.0000.trace.zip"
    _thread_zip(p, {"readme.txt": b"hi"})
    return DrMemTraceSpec(path=str(tmp)), p


def drm_bad_zip(tmp: Path):
    p = tmp / "drmemtrace.app.1234.0000.trace.zip"
    p.write_bytes(GARBAGE)
    return DrMemTraceSpec(path=str(tmp)), p


def drm_partial_record(tmp: Path):
    p = tmp / "drmemtrace.app.1234.0000.trace.zip"
    _thread_zip(p, {"chunk.0000": GOOD_RECORDS + b"\0" * 5})
    return DrMemTraceSpec(path=str(tmp)), p


def drm_no_header(tmp: Path):
    p = tmp / "drmemtrace.app.1234.0000.trace.zip"
    _thread_zip(p, {"chunk.0000": _records((0, 8, 0x1000), (1, 8, 0x2000))})
    return DrMemTraceSpec(path=str(tmp)), p


def drm_file_not_dir(tmp: Path):
    p = tmp / "drmemtrace.app.1234.0000.trace.zip"
    _thread_zip(p, {"chunk.0000": GOOD_RECORDS})
    return DrMemTraceSpec(path=str(p)), p


def drm_too_few_threads(tmp: Path):
    d = tmp / "two"
    _thread_zip(d / "drmemtrace.app.1.0.trace.zip", {"chunk.0000": GOOD_RECORDS})
    return PhasesSpec(phases=[UniformSpec(accesses=1), DrMemTraceSpec(path=str(d))]), d


def drm_gz_only(tmp: Path):
    (tmp / "drmemtrace.app.1.0.trace.gz").write_bytes(gzip.compress(GOOD_RECORDS))
    return DrMemTraceSpec(path=str(tmp)), tmp


def npy_missing(tmp: Path):
    p = tmp / "nope.npy"
    return NpySpec(path=str(p)), p


def npy_float(tmp: Path):
    p = tmp / "f.npy"
    np.save(p, np.arange(10, dtype=np.float64))
    return NpySpec(path=str(p)), p


def npy_signed(tmp: Path):
    p = tmp / "i.npy"
    np.save(p, np.arange(10, dtype=np.int64))
    return NpySpec(path=str(p)), p


def npy_2d(tmp: Path):
    p = tmp / "m.npy"
    np.save(p, np.zeros((3, 3), dtype=np.uint64))
    return NpySpec(path=str(p)), p


def npy_struct_without_write(tmp: Path):
    p = tmp / "s.npy"
    np.save(p, np.zeros(4, dtype=[("addr", "<u8"), ("size", "<u2")]))
    return NpySpec(path=str(p)), p


def npy_object(tmp: Path):
    p = tmp / "o.npy"
    np.save(p, np.array([1, "a"], dtype=object), allow_pickle=True)
    return NpySpec(path=str(p)), p


def npy_empty_file(tmp: Path):
    p = tmp / "e.npy"
    p.write_bytes(b"")
    return NpySpec(path=str(p)), p


def npy_empty_array(tmp: Path):
    p = tmp / "z.npy"
    np.save(p, np.zeros(0, dtype=np.uint64))
    return NpySpec(path=str(p)), p


def npy_garbage(tmp: Path):
    p = tmp / "g.npy"
    p.write_bytes(GARBAGE)
    return NpySpec(path=str(p)), p


def npy_truncated(tmp: Path):
    p = tmp / "t.npy"
    buf = io.BytesIO()
    np.save(buf, np.arange(1000, dtype=np.uint64))
    p.write_bytes(buf.getvalue()[:2000])
    return NpySpec(path=str(p)), p


BROKEN = [lackey_missing, lackey_empty, lackey_binary, lackey_text_without_accesses,
          lackey_only_instructions, lackey_truncated_gz, lackey_gzip_garbage, lackey_directory,
          drm_missing, drm_no_zips, drm_zip_without_chunks, drm_bad_zip, drm_partial_record,
          drm_no_header, drm_file_not_dir, drm_too_few_threads, drm_gz_only,
          npy_missing, npy_float, npy_signed, npy_2d, npy_struct_without_write, npy_object,
          npy_empty_file, npy_empty_array, npy_garbage, npy_truncated]


@pytest.mark.parametrize("make", BROKEN, ids=lambda f: f.__name__)
def test_broken_input_raises_trace_error_at_build_naming_the_path(tmp_path, make):
    spec, path = make(tmp_path)
    n_vcpus = 2 if make is drm_too_few_threads else 1
    with pytest.raises(TraceError) as e:
        spec.build(n_vcpus, 0, 1 << 30)
    assert e.value.path == str(path)
    assert str(e.value).startswith(f"{path}: ")
    assert e.value.message and "\n" not in str(e.value)


@pytest.mark.parametrize("make, words", [
    (lackey_missing, "no such file"), (lackey_empty, "empty file"),
    (lackey_binary, "binary data"), (lackey_text_without_accesses, "no data access lines"),
    (lackey_only_instructions, "I lines are skipped unless instructions: true"),
    (lackey_truncated_gz, "truncated gzip"), (lackey_directory, "is a directory"),
    (drm_no_zips, "no *.trace.zip"), (drm_zip_without_chunks, "no chunk.NNNN members"),
    (drm_bad_zip, "not a valid zip"), (drm_partial_record, "not a multiple of the 12-byte"),
    (drm_no_header, "TRACE_TYPE_HEADER"), (drm_too_few_threads, "2 vCPUs but the trace has only 1"),
    (drm_gz_only, "only zip-compressed"),
    (npy_float, "expected uint64 addresses, got dtype float64"),
    (npy_2d, "expected a 1-D array"), (npy_struct_without_write, "needs a field 'write' or 'kind'"),
    (npy_empty_array, "no accesses"),
], ids=lambda x: getattr(x, "__name__", None))
def test_trace_error_messages_say_what_is_wrong(tmp_path, make, words):
    spec, _ = make(tmp_path)
    with pytest.raises(TraceError) as e:
        spec.build(2 if make is drm_too_few_threads else 1, 0, 1 << 30)
    assert words in e.value.message


def test_truncation_found_while_streaming_is_a_trace_error(tmp_path):
    """A big truncated gzip passes the cheap build check; reading on raises TraceError."""
    lines = b"".join(b" L %010x,8\n" % (i * 64) for i in range(300_000))
    whole = gzip.compress(lines, compresslevel=1)
    p = tmp_path / "big.lackey.gz"
    p.write_bytes(whole[: int(len(whole) * 0.7)])
    (stream,) = LackeySpec(path=str(p)).build(1, 0, 1 << 30)
    with pytest.raises(TraceError, match="truncated gzip") as e:
        for _ in stream:
            pass
    assert e.value.path == str(p)


def test_corruption_found_while_streaming_a_zip_is_a_trace_error(tmp_path):
    """Records stored uncompressed; flip a byte late in the member: CRC fails at the end."""
    d = tmp_path / "t"
    p = d / "drmemtrace.app.7.0.trace.zip"
    body = GOOD_RECORDS + _records(*[(0, 8, i) for i in range(100_000)])
    d.mkdir()
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("chunk.0000", body)
    raw = bytearray(p.read_bytes())
    pos = raw.find(body[-24:])
    raw[pos] ^= 0xFF
    p.write_bytes(bytes(raw))
    (stream,) = DrMemTraceSpec(path=str(d)).build(1, 0, 1)
    with pytest.raises(TraceError) as e:
        for _ in stream:
            pass
    assert e.value.path == str(p) and "CRC" in e.value.message


def test_npy_kind_field_out_of_range_is_a_trace_error(tmp_path):
    p = tmp_path / "k.npy"
    arr = np.zeros(10, dtype=[("addr", "<u8"), ("kind", "u1")])
    arr["kind"][5] = 7
    np.save(p, arr)
    (stream,) = NpySpec(path=str(p)).build(1, 0, 1)
    with pytest.raises(TraceError, match="outside 0..2"):
        stream.collect()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file_is_a_trace_error(tmp_path):
    p = tmp_path / "secret.lackey"
    p.write_bytes(LACKEY_TEXT)
    p.chmod(0)
    try:
        with pytest.raises(TraceError, match="cannot open"):
            LackeySpec(path=str(p)).build(1, 0, 1)
    finally:
        p.chmod(0o600)


def test_a_good_tiny_drmemtrace_reads(tmp_path):
    _thread_zip(tmp_path / "trace" / "drmemtrace.app.1234.0000.trace.zip",
                {"chunk.0000": GOOD_RECORDS})
    (s,) = DrMemTraceSpec(path=str(tmp_path)).build(1, 0, 1)
    a, k = s.collect()
    assert a.tolist() == [0x1000, 0x2000] and k.tolist() == [0, 1]


def test_sample_copy_with_a_missing_thread_file_still_reads(tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(SAMPLE, d)
    victim = sorted(d.glob("*/trace/*.trace.zip"))[-1]
    victim.unlink()
    assert len(DrMemTraceSpec(path=str(d)).build(20, 0, 1)) == 20
