"""The only warning silenced for learners is PyTorch's own `torch.jit.script is deprecated`, raised inside
torch.func.hessian's jvp decompositions (issue 16, item 7); it reached lesson 01 as a red stderr box."""
import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_exact_hessian_and_the_xor_test_raise_no_future_warning():
    code = ("import torch\nfrom pruninglib.curvature.hessian import exact_hessian\nfrom pruninglib.lessons.xor import "
            "train_xor, xor_pruning_trial\nm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))\n"
            "x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))\nexact_hessian(m, (x, y))\n"
            "xor_pruning_trial(train_xor(4, iters=20), steps=1, iters=5)\nprint('ok')")
    r = _run(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_other_future_warnings_still_show():
    code = ("import warnings\nfrom pruninglib.curvature.params import quiet_jit_deprecation\n"
            "with quiet_jit_deprecation():\n    warnings.warn('something else', FutureWarning)\n")
    assert _run(code).returncode != 0
