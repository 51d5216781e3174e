"""simulator.arch.descriptors: stage-2 descriptors bit for bit (kvm_pgtable.h, Linux 6.12)."""

from __future__ import annotations

import naive as N
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.arch import descriptors as D
from simulator.arch.descriptors import DescriptorError, decode

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
VALID_PROTS = [p for p in range(32) if N.set_prot_attr(p) is not None]
LEVELS = {12: [1, 2, 3], 14: [2, 3], 16: [2, 3]}


@st.composite
def leaves(draw, nt=False):
    """(page_shift, level, pa, prot, sw) of an encodable leaf."""
    ps = draw(st.sampled_from([12, 14, 16]))
    level = draw(st.sampled_from(LEVELS[ps]))
    shift = N.granule_shift(level, ps)
    pa_bits = 52 if ps == 16 else 48
    pa = draw(st.integers(0, (1 << (pa_bits - shift)) - 1)) << shift
    return ps, level, pa, draw(st.sampled_from(VALID_PROTS)), draw(st.integers(0, 15))


# ------------------------------------------------------------------------------------------
# Leaves


@pytest.mark.parametrize("prot, attr", [
    (D.PROT_RWX, 0x7FC),
    (D.PROT_RW, 0x7FC | 1 << 54),
    (D.PROT_R, 0x77C | 1 << 54),
    (D.PROT_DEVICE | D.PROT_RW, 0x7C4 | 1 << 54),
    (D.PROT_NORMAL_NC | D.PROT_R, 0x754 | 1 << 54),
    (0, 0x73C | 1 << 54),
])
def test_prot_to_attr_is_stage2_set_prot_attr(prot, attr):
    assert D.prot_attr(prot) == attr == N.set_prot_attr(prot)


@pytest.mark.parametrize("prot", [D.PROT_DEVICE | D.PROT_NORMAL_NC, D.PROT_DEVICE | D.PROT_RWX,
                                  D.PROT_NORMAL_NC | D.PROT_X])
def test_prot_combinations_the_kernel_refuses_raise(prot):
    with pytest.raises(DescriptorError, match=rf"^invalid protection {prot:#x}$"):
        D.prot_attr(prot)


@pytest.mark.nojit
def test_leaf_encodings_by_hand():
    assert D.encode_leaf(0x8000_0000, 3, 12) == 0x0000_0000_8000_07FF  # page: type 1
    assert D.encode_leaf(0x4000_0000, 1, 12) == 0x0000_0000_4000_07FD  # block: type 0
    assert D.encode_leaf(0x20_0000, 2, 12, prot=D.PROT_RW, sw=3) == (
        0x20_07FD | 1 << 54 | 3 << 55)
    assert D.encode_table(0x4000_2000, 12) == 0x4000_2003


@settings(settings.get_profile("mmu"), max_examples=200)
@given(leaves())
def test_leaf_encoding_matches_the_kernel_and_decodes_back(leaf):
    ps, level, pa, prot, sw = leaf
    pte = D.encode_leaf(pa, level, ps, prot=prot, sw=sw)
    assert pte == N.leaf_pte(pa, N.set_prot_attr(prot) | sw << 55, level, ps)
    d = decode(pte, level, ps)
    assert d.kind == ("page" if level == 3 else "block")
    assert (d.oa, d.sw, d.nt, d.af, d.sh) == (pa, sw, False, True, 3)
    assert (d.r, d.w, d.xn) == (bool(prot & D.PROT_R), bool(prot & D.PROT_W),
                                not prot & D.PROT_X)
    assert d.memattr == (N.set_prot_attr(prot) >> 2) & 0xF
    assert N.pte_to_phys(pte & N.oa_mask(level, ps), ps) == pa


@settings(settings.get_profile("mmu"), max_examples=100)
@given(leaves())
def test_nt_block_decodes_with_its_output_address(leaf):
    ps, level, pa, prot, sw = leaf
    level = min(level, 2)
    pa &= ~((1 << N.granule_shift(level, ps)) - 1)
    pte = D.encode_leaf(pa, level, ps, prot=prot, sw=sw, nt=True)
    assert pte & (1 << 16)
    d = decode(pte, level, ps)
    assert (d.kind, d.nt, d.oa) == ("block", True, pa)


def test_64k_granule_puts_pa_51_48_in_bits_15_12():
    pa = (0xA << 48) | (0x1234 << 16)
    pte = D.encode_leaf(pa, 3, 16)
    assert pte & 0xF000 == 0xA000
    assert pte & N.bits(47, 16) == 0x1234 << 16
    assert decode(pte, 3, 16).oa == pa
    assert D.encode_table(1 << 50, 16) == (0x4 << 12) | 3


def test_nt_is_only_a_block_bit():
    # a 4K page holds address bit 16 where a block holds nT
    page = D.encode_leaf(0x1_0000, 3, 12)
    assert page & (1 << 16)
    assert (decode(page, 3, 12).nt, decode(page, 3, 12).oa) == (False, 0x1_0000)
    assert not D.encode_leaf(0, 3, 12, nt=True) & (1 << 16)
    assert D.encode_leaf(0, 2, 12, nt=True) & (1 << 16)


def test_reserved_level_3_encoding_decodes_as_invalid():
    block_like = D.encode_leaf(0x20_0000, 2, 12)
    assert decode(block_like, 3, 12).kind == "invalid"


def test_dump_line_reads_like_the_kernels():
    assert str(decode(0x8000_07FF, 3, 12)) == (
        "0x00000000800007ff L3 page oa=0x80000000 RWX memattr=0xf sh=3 AF sw=0x0")
    assert str(decode(0x4000_2003, 1, 12)) == "0x0000000040002003 table -> 0x40002000"
    assert str(decode(0x404, 3, 12)) == "0x0000000000000404 invalid owner=1 locked"
    assert str(decode(0, 3, 12)) == "0"


@pytest.mark.parametrize("kwargs, message", [
    (dict(pa=0x1000, level=2, page_shift=12), r"^output address 0x1000 is not aligned to the "
                                                r"level-2 size$"),
    (dict(pa=1 << 48, level=3, page_shift=12), r"^output address 0x1000000000000 exceeds 48 "
                                                 r"bits$"),
    (dict(pa=0, level=3, page_shift=12, sw=16), r"^software bits are 4 bits wide \(58:55\)$"),
])
def test_leaf_that_cannot_be_encoded_is_refused(kwargs, message):
    with pytest.raises(DescriptorError, match=message):
        D.encode_leaf(**kwargs)


def test_unaligned_table_address_is_refused():
    with pytest.raises(DescriptorError, match=r"^table address 0x4000100 is not page aligned$"):
        D.encode_table(0x400_0100, 12)


# ------------------------------------------------------------------------------------------
# Invalid descriptors: owner annotations and the break-before-make lock


def test_owner_annotation_round_trips_in_bits_9_2():
    for owner in range(256):
        pte = D.encode_owner(owner)
        assert pte == owner << 2 == N.owner_pte(owner)
        d = decode(pte, 3, 12)
        assert (d.kind, d.owner, d.locked) == ("invalid", owner, False)
        locked = D.encode_owner(owner, locked=True)
        assert locked == pte | 1 << 10
        assert (decode(locked, 2, 12).owner, decode(locked, 2, 12).locked) == (owner, True)
        assert bool(D.is_locked(locked)) and not bool(D.is_locked(pte))


def test_owner_id_beyond_8_bits_is_refused():
    with pytest.raises(DescriptorError, match=r"^owner id 256 does not fit bits 9:2$"):
        D.encode_owner(256)


# ------------------------------------------------------------------------------------------
# "Is this entry counted"

DEF_MEM = D.encode_leaf(0x8000_0000, 3, 12, prot=D.PROT_RWX)
DEF_MMIO = D.encode_leaf(0x9000_0000, 3, 12, prot=D.PROT_DEVICE | D.PROT_RW)


@pytest.mark.parametrize("pte, level, guest, host", [
    (0, 3, False, False),
    (DEF_MEM, 3, True, False),
    (DEF_MMIO, 3, True, False),
    (D.encode_leaf(0x4000_0000, 1, 12), 1, True, False),  # a default block
    (D.encode_leaf(0x8000_0000, 3, 12, prot=D.PROT_RW), 3, True, True),  # XN: not default
    (D.encode_leaf(0x8000_0000, 3, 12, sw=1), 3, True, True),  # a software bit
    (D.encode_leaf(0x20_0000, 2, 12, nt=True), 2, True, True),  # nT
    (D.encode_owner(1), 3, True, True),
    (D.encode_owner(0, locked=True), 3, True, True),
    (D.encode_table(0x4000_2000, 12), 1, True, True),
    (DEF_MEM & ~(1 << 10), 3, True, True),  # no AF
])
def test_is_counted_for_guest_and_host_rules(pte, level, guest, host):
    assert bool(D.is_counted(pte, level, D.COUNT_NONZERO)) is guest
    assert bool(D.is_counted(pte, level, D.COUNT_HOST_COALESCE)) is host
    assert N.is_counted(pte, level, N.GUEST, 12) is guest
    assert N.is_counted(pte, level, N.HOST, 12) is host


@settings(settings.get_profile("mmu"), max_examples=200)
@given(leaves(), st.booleans())
def test_is_counted_matches_the_reference_rule(leaf, host):
    ps, level, pa, prot, sw = leaf
    pte = D.encode_leaf(pa, level, ps, prot=prot, sw=sw)
    rule = (D.COUNT_HOST_COALESCE, N.HOST) if host else (D.COUNT_NONZERO, N.GUEST)
    assert bool(D.is_counted(pte, level, rule[0])) == N.is_counted(pte, level, rule[1], ps)
