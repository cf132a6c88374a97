#!/usr/bin/env python3
"""Unit tests of bench/hot_code.py's own functions on synthetic input: no
sidecar or valgrind is run. Plain unittest, stdlib only:

    python3 -m unittest bench/test_hot_code.py
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_hot_code_under_test", HERE / "hot_code.py")
hot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hot)

# What `callgrind_annotate --inclusive=no --threshold=100 --auto=no` prints
# for a dump made with `--demangle=no`: file (`???` without debug info),
# the symbol as the linker sees it, the object, recursion as `'2`.
ANNOTATE = """\
--------------------------------------------------------------------------------
Ir                   
--------------------------------------------------------------------------------
778,230,822 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
777,848,391 (99.95%)  ./nptl/./nptl/pthread_create.c:start_thread [/usr/lib/x86_64-linux-gnu/libc.so.6]
 38,180,748 ( 4.91%)  ???:_ZN4sha26sha25611compress25617h8569c4c9ca98eb58E [/work/bb]
 32,372,618 ( 4.16%)  /rustc/abc/library/core/src/intrinsics/mod.rs:_ZN4sha26sha25611compress25617h8569c4c9ca98eb58E
  1,000 ( 0.00%)  ???:_ZN4core5slice4sort9quicksort17h1b43494e91d5237aE'2 [/work/bb]
    500 ( 0.00%)  ???:_ZN4core5slice4sort9quicksort17h1b43494e91d5237aE [/work/bb]
     20 ( 0.00%)  ???:_RNvNvMs0_NtNtNtCsjrHSEGnQ3l9_3std3sys6thread4unixNtB7_6Thread3new12thread_start [/work/bb]
"""

SHA = "_ZN4sha26sha25611compress25617h8569c4c9ca98eb58E"
SORT = "_ZN4core5slice4sort9quicksort17h1b43494e91d5237aE"
THREAD = "_RNvNvMs0_NtNtNtCsjrHSEGnQ3l9_3std3sys6thread4unixNtB7_6Thread3new12thread_start"


class ParseAnnotate(unittest.TestCase):
    def test_self_cost_by_symbol_merging_files_and_recursion(self):
        costs = hot.parse_annotate(ANNOTATE)
        self.assertEqual(costs[SHA], 38_180_748 + 32_372_618)
        self.assertEqual(costs[SORT], 1_500)
        self.assertEqual(costs[THREAD], 20)
        self.assertEqual(costs["start_thread"], 777_848_391)
        self.assertNotIn("TOTALS", " ".join(costs))


class ParsePerfReport(unittest.TestCase):
    def test_share_by_symbol_from_the_native_profile(self):
        out = """\
# Samples: 70K of event 'cpu-clock'
#
# Overhead  Symbol
# ........  ......
#
     4.47%  [.] __memmove_avx512_unaligned_erms
     4.29%  [.] _ZN4sha26sha2566x86_sha8compress17h0123456789abcdefE
     4.25%  [k] _raw_spin_unlock_irqrestore
     1.05%  [.] aws_lc_0_47_0_aes_gcm_encrypt_avx512
"""
        shares = hot.parse_perf_report(out)
        self.assertEqual(shares, {"__memmove_avx512_unaligned_erms": 4.47,
                                  "_ZN4sha26sha2566x86_sha8compress17h0123456789abcdefE": 4.29,
                                  "aws_lc_0_47_0_aes_gcm_encrypt_avx512": 1.05})


class HotList(unittest.TestCase):
    SYMBOLS = {"serve_a": (0x1000, 64), "serve_b": (0x2000, 64), "start_only": (0x3000, 64),
               "both": (0x4000, 64), "stop_only": (0x5000, 64)}

    def test_serving_first_busiest_first_then_the_other_phases(self):
        names = hot.hot_list({"serve_a": 10, "serve_b": 50, "both": 5, "malloc": 99},
                             [{"start_only": 7, "both": 100}, {"stop_only": 1}], self.SYMBOLS)
        self.assertEqual(names, ["serve_b", "serve_a", "both", "start_only", "stop_only"])

    def test_functions_not_in_the_binary_are_left_out(self):
        names = hot.hot_list({"malloc": 99, "serve_a": 1}, [], self.SYMBOLS)
        self.assertEqual(names, ["serve_a"])


class Coverage(unittest.TestCase):
    NM = """\
0000000000001000 0000000000000100 T first
0000000000001100 0000000000000100 t second
0000000000001200 0000000000000100 W third
0000000000900000 0000000000000100 t far
0000000000004000 0000000000000010 r a_constant
                 U malloc
"""

    def test_nm_output_gives_functions_only(self):
        syms = hot.bench.parse_nm(self.NM)
        self.assertEqual(set(syms), {"first", "second", "third", "far"})
        self.assertEqual(syms["second"], (0x1100, 0x100))

    def test_a_list_placed_together(self):
        c = hot.bench.coverage(hot.bench.parse_nm(self.NM), ["first", "second", "third"])
        self.assertEqual((c.listed, c.found, c.found_bytes, c.span), (3, 3, 0x300, 0x300))
        self.assertTrue(c.fresh and c.together)
        self.assertIn("placed together", c.describe())

    def test_a_list_the_linker_did_not_follow(self):
        c = hot.bench.coverage(hot.bench.parse_nm(self.NM), ["first", "far"])
        self.assertTrue(c.fresh)
        self.assertFalse(c.together)
        self.assertIn("not linked in the list's order", c.describe())

    def test_a_stale_list(self):
        names = ["first"] + [f"gone{i}" for i in range(9)]
        c = hot.bench.coverage(hot.bench.parse_nm(self.NM), names)
        self.assertFalse(c.fresh)
        self.assertIn("stale", c.describe())

    def test_a_binary_without_symbols_cannot_tell(self):
        with tempfile.TemporaryDirectory() as d:
            stripped = Path(d) / "stripped"
            # A Debian binary is stripped; `nm` finds nothing in it.
            stripped.write_bytes(Path("/usr/bin/true").read_bytes())
            listed = Path(d) / "hot-code.txt"
            listed.write_text("first\n")
            c = hot.bench.binary_coverage(stripped, listed)
            self.assertEqual(c.unknown, "the binary has no symbols (stripped?)")
            self.assertIn("cannot tell", c.describe())
            self.assertNotIn("stale", c.describe())

    def test_comments_and_blank_lines_are_not_names(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "hot-code.txt"
            p.write_text("# a comment\n\nfirst\n  # indented comment\nsecond\n")
            self.assertEqual(hot.bench.listed_names(p), ["first", "second"])
            self.assertEqual(hot.bench.listed_names(Path(d) / "none.txt"), [])


class TheCommittedList(unittest.TestCase):
    """link/hot-code.txt as committed. Every symbol's hash changes with the
    toolchain, so a list made by another rustc than rust-toolchain.toml's
    matches nothing (the linker would skip it all, without a word)."""

    LIST = HERE.parent / "link" / "hot-code.txt"

    def test_it_was_made_by_the_pinned_toolchain(self):
        channel = re.search(r'^channel = "([^"]+)"', (HERE.parent / "rust-toolchain.toml").read_text(),
                            re.M).group(1)
        made = re.search(r"rustc (\S+)", self.LIST.read_text())
        self.assertIsNotNone(made, "the list's header names no rustc")
        self.assertEqual(made.group(1), channel,
                         "link/hot-code.txt was made by another toolchain: run `make hot-code`")

    def test_names_are_symbols_once_each(self):
        names = hot.bench.listed_names(self.LIST)
        self.assertGreater(len(names), 500)
        self.assertEqual(len(names), len(set(names)))
        self.assertFalse([n for n in names if " " in n or "::" in n], "demangled names")


if __name__ == "__main__":
    unittest.main()
