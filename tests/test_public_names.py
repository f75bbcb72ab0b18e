# SPDX-License-Identifier: Apache-2.0
"""The lazy public names of ``samkern`` and ``samkern.ops`` stay what they are documented to be.

A subpackage with the same name as a function export (``samkern/ops/lora_linear/`` next to the
function ``samkern.ops.lora_linear``, until session 16) is bound onto its parent package when it is
first imported, after which the attribute is the module, not the function: the first call worked
and every later one failed with "'module' object is not callable"."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import samkern
import samkern.ops


def test_no_ops_subpackage_shadows_a_function_export():
    subpackages = {m.name for m in pkgutil.iter_modules(samkern.ops.__path__)}
    clash = subpackages & set(samkern.ops.__all__)
    assert not clash, f"subpackages named like public functions: {sorted(clash)}"


def test_every_ops_export_stays_callable_after_its_module_is_imported():
    for name in samkern.ops.__all__:
        first = getattr(samkern.ops, name)
        importlib.import_module(first.__module__)  # what a layer or a test importing it directly does
        assert callable(first), name
        assert getattr(samkern.ops, name) is first, f"samkern.ops.{name} changed after its module was imported"


def test_from_import_in_a_fresh_process():
    # ``from samkern.ops import lora_linear`` resolves through the package attribute: checked in a
    # new interpreter, where nothing has been imported yet
    code = ("import samkern.layers.lora_linear\n"  # imports the op's modules first, as a model would
            "from samkern.ops import lora_linear, connector_reorder, ssd_chunk_scan, causal_conv1d, rmsnorm_gated\n"
            "import samkern\n"
            "for f in (lora_linear, connector_reorder, ssd_chunk_scan, causal_conv1d, rmsnorm_gated,\n"
            "          samkern.ops.lora_linear, samkern.ops.connector_reorder):\n"
            "    assert callable(f) and not isinstance(f, type(samkern)), f\n")
    subprocess.run([sys.executable, "-c", code], check=True)
