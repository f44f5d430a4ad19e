"""The contract of vLLM symbols the plugin needs, against whatever vLLM is installed (0.32 in
`./launch.sh test`, 0.33's Python code in `./launch.sh test-vllm 0.33`), and simulated breaks."""

from __future__ import annotations

import sys
import types

import pytest

from qwen3vl_vllm.serving import contract


def test_every_symbol_is_there_on_the_installed_vllm():
    import vllm

    rows = contract.check()
    print(f"CONTRACT vLLM {vllm.__version__}: {len(rows)} symbols, "
          f"{sum(not r['missing'] for r in rows)} present")
    assert len(rows) == len(contract.SYMBOLS) >= 35
    assert contract.problems(rows) == [], contract.problems(rows)
    assert contract.tested(vllm.__version__)


def test_the_patched_symbols_keep_passing_after_the_plugin_wraps_them():
    from qwen3vl_vllm.serving import plugin

    plugin.register()
    assert contract.problems() == []


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("fake_vllm_mod")

    class Renderer:
        def process(self, prompt, mm_data):  # lacks mm_uuids
            return prompt

    module.Renderer = Renderer
    monkeypatch.setitem(sys.modules, "fake_vllm_mod", module)
    return module


def test_a_missing_and_a_changed_symbol_are_named(fake_vllm):
    symbols = (contract.Symbol(("fake_vllm_mod",), "Renderer.process", ("prompt", "mm_data", "mm_uuids"), "x"),
               contract.Symbol(("fake_vllm_mod", "fake_other"), "Gone", (), "y"),
               contract.Symbol(("fake_vllm_mod",), "Also.gone", (), "z", optional=True))
    rows = contract.check(symbols)
    assert rows[0]["missing"] == "Renderer.process lacks parameter(s) mm_uuids"
    assert rows[1]["missing"] == "Gone not found in fake_vllm_mod or fake_other"
    assert contract.problems(rows) == ["Renderer.process lacks parameter(s) mm_uuids (needed for x)",
                                       "Gone not found in fake_vllm_mod or fake_other (needed for y)"]


def test_a_moved_module_is_found_in_its_new_place(fake_vllm, monkeypatch):
    new = types.ModuleType("fake_new_place")
    new.validate = lambda args: None
    monkeypatch.setitem(sys.modules, "fake_new_place", new)
    rows = contract.check((contract.Symbol(("fake_old_place", "fake_new_place"), "validate", ("args",)),))
    assert rows[0]["missing"] == "" and rows[0]["found_in"] == "fake_new_place"
