"""The batch runner and `--list` import no torch (a lab's scheduler node may not even have it loaded fast)."""
import subprocess
import sys


def test_runner_import_and_list_load_no_torch():
    code = ("import sys, runpy\nimport pruninglib.run.runner\nassert 'torch' not in sys.modules, 'runner import'\n"
            "sys.argv = ['pruninglib.run', '--list']\ntry:\n    runpy.run_module('pruninglib.run', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\nassert 'torch' not in sys.modules, '--list'\nprint('light')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "light" in r.stdout, r.stderr[-2000:]


def test_the_lesson_names_still_import_from_the_package():
    from pruninglib import choose_mode, describe_device, get_device, record, set_seed, setup, show_table

    assert setup.__module__ == "pruninglib.utils" and record.__module__ == "pruninglib.run.record"
    assert callable(show_table) and callable(get_device) and callable(set_seed) and callable(choose_mode)
    assert callable(describe_device)
