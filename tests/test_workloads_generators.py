"""Synthetic generators: determinism, bounds, write ratio, zipf skew, chunking, phases, and the
numpy kernels against slow pure-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import (
    READ,
    WRITE,
    PhasesSpec,
    SequentialSpec,
    StrideSpec,
    UniformSpec,
    WorkloadError,
    ZipfSpec,
    parse_workload,
)
from workloads.generators import FeistelPermutation, lattice_positions, zipf_ranks
from workloads.spec import phase_seed, vcpu_rngs

MEM = 1 << 30

GENERATORS = {
    "sequential": SequentialSpec(accesses=5000, write_ratio=0.3),
    "sequential-small-footprint": SequentialSpec(accesses=5000, start="1M", step=8,
                                                 footprint="4K"),
    "uniform": UniformSpec(accesses=5000, write_ratio=0.5),
    "zipf": ZipfSpec(accesses=5000, alpha=0.8, write_ratio=0.2),
    "zipf-alpha1": ZipfSpec(accesses=5000, footprint="64M"),
    "stride": StrideSpec(accesses=5000, stride="4K", start="512M", footprint="8M",
                         write_ratio=1.0),
    "phases": PhasesSpec(phases=[ZipfSpec(accesses=700), UniformSpec(accesses=1300)]),
}


def collect(spec, n_vcpus=2, seed=7, memory=MEM, chunk=1 << 16):
    return [s.collect() for s in spec.build(n_vcpus, seed, memory, chunk)]


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_gives_same_arrays(name):
    spec = GENERATORS[name]
    a, b = collect(spec), collect(spec)
    for (a0, k0), (b0, k1) in zip(a, b):
        np.testing.assert_array_equal(a0, b0)
        np.testing.assert_array_equal(k0, k1)


@pytest.mark.parametrize("name", GENERATORS)
def test_vcpus_get_different_streams(name):
    (a0, _), (a1, _) = collect(GENERATORS[name])
    assert not np.array_equal(a0, a1)


@pytest.mark.parametrize("name", ["uniform", "zipf", "phases"])
def test_different_seeds_give_different_streams(name):
    spec = GENERATORS[name]
    assert not np.array_equal(collect(spec, seed=1)[0][0], collect(spec, seed=2)[0][0])


@pytest.mark.parametrize("name", ["uniform", "zipf", "sequential", "stride"])
def test_vcpu_stream_does_not_depend_on_the_number_of_vcpus_except_start_offsets(name):
    spec = GENERATORS[name]
    if name in ("sequential", "stride"):  # vCPU 0 always starts at `start`
        assert np.array_equal(collect(spec, n_vcpus=1)[0][0], collect(spec, n_vcpus=3)[0][0])
    else:
        assert np.array_equal(collect(spec, n_vcpus=2)[1][0], collect(spec, n_vcpus=5)[1][0])


@pytest.mark.parametrize("name", GENERATORS)
def test_chunks_concatenate_to_one_big_generation(name):
    spec = GENERATORS[name]
    streams = spec.build(2, 3, MEM, chunk=777)
    for v, stream in enumerate(streams):
        chunks = list(stream)
        sizes = [len(a) for a, _ in chunks]
        assert all(s == 777 for s in sizes[:-1]) and 0 < sizes[-1] <= 777
        assert sum(sizes) == stream.total
        for a, k in chunks:
            assert a.dtype == np.uint64 and k.dtype == np.uint8
            assert a.flags.c_contiguous and k.flags.c_contiguous and len(a) == len(k)
        (big_a, big_k), = [spec.build(2, 3, MEM, chunk=1 << 20)[v].collect()]
        np.testing.assert_array_equal(np.concatenate([a for a, _ in chunks]), big_a)
        np.testing.assert_array_equal(np.concatenate([k for _, k in chunks]), big_k)


@pytest.mark.parametrize("name", GENERATORS)
def test_total_equals_accesses(name):
    spec = GENERATORS[name]
    expected = sum(p.accesses for p in spec.phases) if name == "phases" else spec.accesses
    for stream in spec.build(3, 0, MEM, 1000):
        assert stream.total == expected
        assert len(stream.collect()[0]) == expected


@pytest.mark.parametrize("spec", [
    SequentialSpec(accesses=20_000, step="1M"),
    StrideSpec(accesses=20_000, stride="12345"),
    UniformSpec(accesses=20_000, align=4096),
    ZipfSpec(accesses=20_000, alpha=1.5),
    ZipfSpec(accesses=20_000, page="8K"),
], ids=repr)
@pytest.mark.parametrize("memory", [1 << 20, (1 << 30) + 4096, 40 << 30, 3 * 4096])
def test_null_footprint_stays_within_memory(spec, memory):
    for addr, _ in collect(spec, n_vcpus=3, memory=memory):
        assert int(addr.max()) < memory


@pytest.mark.parametrize("spec, lo, hi", [
    (SequentialSpec(accesses=10_000, start="1M", footprint="64K"), 1 << 20, (1 << 20) + (64 << 10)),
    (StrideSpec(accesses=10_000, start="3M", stride="4K", footprint="1M"), 3 << 20, 4 << 20),
    (UniformSpec(accesses=10_000, footprint="2M"), 0, 2 << 20),
    (ZipfSpec(accesses=10_000, footprint="2M", page="64K"), 0, 2 << 20),
], ids=repr)
def test_addresses_stay_within_footprint(spec, lo, hi):
    for addr, _ in collect(spec, n_vcpus=4):
        assert int(addr.min()) >= lo and int(addr.max()) < hi


def test_sequential_addresses_are_start_plus_i_step_wrapped():
    (a0, k0), (a1, _) = collect(SequentialSpec(accesses=100, start="4K", step=64,
                                               footprint="1K"))
    i = np.arange(100)
    np.testing.assert_array_equal(a0, 4096 + (i * 64) % 1024)
    np.testing.assert_array_equal(a1, 4096 + (512 + i * 64) % 1024)  # vCPU 1 starts halfway
    assert (k0 == READ).all()


def test_stride_addresses_follow_the_formula():
    ((a, _),) = collect(StrideSpec(accesses=50, start=100, stride=4096 + 8, footprint="16K"),
                        n_vcpus=1)
    np.testing.assert_array_equal(a, 100 + (np.arange(50) * 4104) % 16384)


def test_uniform_addresses_are_aligned():
    for addr, _ in collect(UniformSpec(accesses=10_000, align=4096, footprint="1G")):
        assert (addr % 4096 == 0).all()
        assert len(np.unique(addr)) > 9000


def test_zipf_addresses_are_8_byte_aligned():
    for addr, _ in collect(ZipfSpec(accesses=10_000, page=4096)):
        assert (addr % 8 == 0).all()


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("kind", ["sequential", "uniform", "zipf", "stride"])
def test_write_ratio_is_respected(kind, ratio):
    extra = {"stride": "4K"} if kind == "stride" else {}
    spec = parse_workload({"type": kind, "accesses": 100_000, "write_ratio": ratio, **extra})
    for _, k in collect(spec):
        assert set(np.unique(k).tolist()) <= {READ, WRITE}
        assert abs((k == WRITE).mean() - ratio) < 0.01


def test_zipf_top_pages_take_most_accesses():
    """alpha = 1.2 over 65536 pages: the top 1 % of pages gets ~80 % of the accesses."""
    page = 4096
    ((addr, _),) = collect(ZipfSpec(accesses=200_000, alpha=1.2, footprint=65536 * page),
                           n_vcpus=1)
    counts = np.bincount((addr // page).astype(np.int64), minlength=65536)
    top = np.sort(counts)[::-1][:655].sum() / len(addr)
    expected = (1 - 656 ** -0.2) / (1 - 65536 ** -0.2)  # Pareto CDF at rank 655
    assert top > 0.7 and abs(top - expected) < 0.03
    ((uaddr, _),) = collect(UniformSpec(accesses=200_000, footprint=65536 * page), n_vcpus=1)
    ucounts = np.bincount((uaddr // page).astype(np.int64), minlength=65536)
    assert np.sort(ucounts)[::-1][:655].sum() / len(uaddr) < 0.03


def test_zipf_hot_pages_are_shared_by_vcpus_and_scattered():
    streams = collect(ZipfSpec(accesses=50_000, alpha=1.2, footprint="1G"), n_vcpus=2)
    hot = [set(np.argsort(np.bincount((a // 4096).astype(np.int64)))[-20:].tolist())
           for a, _ in streams]
    assert len(hot[0] & hot[1]) >= 15
    hottest = sorted(hot[0])
    assert hottest[-1] - hottest[0] > (1 << 30) // 4096 // 4  # not packed at the bottom


def test_phases_run_one_after_another():
    spec = PhasesSpec(phases=[SequentialSpec(accesses=100, step=64),
                              SequentialSpec(accesses=50, start="1M", step=4096),
                              UniformSpec(accesses=30, footprint="4K", write_ratio=0.5)])
    streams = spec.build(2, 11, MEM, chunk=64)
    chunks = list(streams[0])
    assert [len(a) for a, _ in chunks] == [64, 64, 52]  # re-cut across phase boundaries
    addr = np.concatenate([a for a, _ in chunks])
    np.testing.assert_array_equal(addr[:100], np.arange(100) * 64)
    np.testing.assert_array_equal(addr[100:150], (1 << 20) + np.arange(50) * 4096)
    (ua, uk), = [UniformSpec(accesses=30, footprint="4K", write_ratio=0.5)
                 .build(1, phase_seed(11, 2), MEM)[0].collect()]
    np.testing.assert_array_equal(addr[150:], ua)


def test_identical_phases_draw_different_accesses():
    z = ZipfSpec(accesses=1000)
    (a, _), = collect(PhasesSpec(phases=[z, z]), n_vcpus=1)
    assert not np.array_equal(a[:1000], a[1000:])


def test_nested_phases():
    spec = parse_workload({"type": "phases", "phases": [
        {"type": "sequential", "accesses": 10},
        {"type": "phases", "phases": [{"type": "sequential", "accesses": 5, "start": "1K"}]}]})
    (a, _), = collect(spec, n_vcpus=1)
    np.testing.assert_array_equal(a, np.r_[np.arange(10) * 64, 1024 + np.arange(5) * 64])


@pytest.mark.parametrize("spec, match", [
    (SequentialSpec(accesses=1, footprint="2G"), "exceeds the guest memory size 1GiB"),
    (SequentialSpec(accesses=1, start="1G"), "start 1GiB is not below the guest memory"),
    (StrideSpec(accesses=1, start="512M", stride=64, footprint="768M"), "exceeds the guest"),
    (UniformSpec(accesses=1, footprint="4K", align="8K"), "smaller than align"),
    (ZipfSpec(accesses=1, footprint="4K", page="8K"), "smaller than one page"),
    (ZipfSpec(accesses=1, page=12), "multiple of 8"),
], ids=repr)
def test_spec_that_does_not_fit_memory_is_a_workload_error(spec, match):
    with pytest.raises(WorkloadError, match=match):
        spec.build(1, 0, MEM)


@pytest.mark.parametrize("args, match", [
    ((0, 0, MEM, 10), "n_vcpus must be an int >= 1"),
    ((1, -1, MEM, 10), "seed must be an int >= 0"),
    ((1, 0, 0, 10), "memory must be an int >= 1"),
    ((1, 0, MEM, 0), "chunk must be an int >= 1"),
])
def test_bad_build_arguments(args, match):
    with pytest.raises(WorkloadError, match=match):
        UniformSpec(accesses=1).build(*args)


def test_vcpu_rngs_follow_seedsequence_spawn():
    ss = np.random.SeedSequence(42).spawn(3)[2].spawn(3)[1]
    expected = np.random.Generator(np.random.PCG64(ss)).random(4)
    np.testing.assert_array_equal(vcpu_rngs(42, 2)[1].random(4), expected)


# --- kernels against slow references ----------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(i0=st.integers(0, 1 << 40), n=st.integers(1, 300), offset=st.integers(0, 1 << 62),
       stride=st.integers(0, 1 << 63), span=st.integers(1, 1 << 62))
def test_lattice_positions_match_python_ints(i0, n, offset, stride, span):
    got = lattice_positions(i0, n, offset, stride, span)
    assert got.dtype == np.uint64
    assert got.tolist() == [(offset + (i0 + j) * stride) % span for j in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
def test_feistel_is_a_bijection(n, seed):
    perm = FeistelPermutation(n, seed)
    img = perm(np.arange(n, dtype=np.uint64))
    assert img.dtype == np.uint64
    np.testing.assert_array_equal(np.sort(img), np.arange(n))
    np.testing.assert_array_equal(perm(np.arange(n, dtype=np.uint64)), img)  # deterministic


def test_feistel_on_a_huge_domain_is_injective_on_a_sample_and_in_range():
    n = (1 << 40) + 12345
    x = np.random.default_rng(0).choice(n, 200_000, replace=False).astype(np.uint64)
    y = FeistelPermutation(n, 1)(x)
    assert len(np.unique(y)) == len(x) and int(y.max()) < n


def test_feistel_differs_by_seed_and_is_not_identity():
    x = np.arange(1000, dtype=np.uint64)
    a, b = FeistelPermutation(1000, 1)(x), FeistelPermutation(1000, 2)(x)
    assert not np.array_equal(a, b) and not np.array_equal(a, x)


@settings(max_examples=100, deadline=None)
@given(u=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=50),
       n=st.integers(1, 1 << 40), alpha=st.sampled_from([0.3, 0.8, 0.999, 1.0, 1.001, 1.2, 2.5]))
def test_zipf_ranks_match_the_formula(u, n, alpha):
    got = zipf_ranks(np.array(u), n, alpha)

    def ref(x: float) -> int:
        if n == 1:
            return 0
        if alpha == 1.0:
            r = math.floor(math.exp(x * math.log(n))) - 1  # shared/bench/README.md formula
        else:
            r = math.floor(((n ** (1 - alpha) - 1) * x + 1) ** (1 / (1 - alpha))) - 1
        return min(max(r, 0), n - 1)

    for x, g in zip(u, got.tolist()):
        r = ref(x)
        assert 0 <= g < n
        assert abs(g - r) <= max(1, r * 1e-9)  # equal up to float rounding at the floor


def test_zipf_ranks_alpha_one_equals_the_bench_formula_exactly():
    u = np.random.default_rng(3).random(100_000)
    p = 1 << 20
    expected = np.floor(np.exp(u * np.log(p))).astype(np.int64) - 1
    np.testing.assert_array_equal(zipf_ranks(u, p, 1.0), expected)
