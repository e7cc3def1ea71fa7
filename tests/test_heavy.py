"""timm and torchvision are imported without torch._dynamo (``scan_cli.backbones.heavy``, issue 21) and behave
the same: what they deferred is the real thing the moment it is used. Each test runs in a fresh
process, since what a process has imported is what is tested."""

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_timm_builds_and_runs_a_model_without_importing_torch_dynamo():
    _python("""
        import sys
        import torch
        real_disable = torch.compiler.disable
        from scan_cli.backbones.heavy import load_timm

        timm = load_timm()
        assert "torchvision" in sys.modules and "timm.models.naflexvit" in sys.modules
        model = timm.create_model("test_resnet", num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
        import timm.data
        timm.data.create_transform(input_size=(3, 32, 32))
        assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
        assert torch.compiler.disable is real_disable, "torch.compiler.disable was not restored"
        assert "torch._dynamo.utils" not in sys.modules, "the stand-in was left in sys.modules"
        assert load_timm() is timm
    """)


def test_what_was_deferred_is_the_real_thing_when_used():
    _python("""
        import sys
        from scan_cli.backbones.heavy import load_timm

        load_timm()
        roi_align = sys.modules["torchvision.ops.roi_align"]
        supported = roi_align.is_compile_supported("cpu")  # imports torch._dynamo now
        from torch._dynamo.utils import is_compile_supported
        assert supported == is_compile_supported("cpu")
        assert type(sys.modules["torch._dynamo.utils"]).__name__ == "module"  # the real one

        # a method timm decorated with torch.compiler.disable is the real dynamo-disabled function
        import timm.models.naflexvit as naflex
        method = naflex.NaFlexEmbeds._apply_learned_naflex_pos_embed
        assert getattr(method, "_torchdynamo_disable", False) is True
        assert method.__name__ == "_apply_learned_naflex_pos_embed"
    """)


def test_anything_else_asked_of_the_stand_in_imports_the_real_module():
    _python("""
        import sys
        from scan_cli.backbones.heavy import _dynamo_deferred

        with _dynamo_deferred():
            from torch._dynamo.utils import counters  # not what torchvision asks for: the real module's
        real = sys.modules["torch._dynamo.utils"]
        assert type(real).__name__ == "module" and counters is real.counters
    """)


def test_nothing_is_deferred_once_torch_dynamo_is_imported():
    _python("""
        import sys
        import torch._dynamo
        from scan_cli.backbones.heavy import load_torchvision

        tv = load_torchvision()
        from torch._dynamo.utils import is_compile_supported
        assert sys.modules["torchvision.ops.roi_align"].is_compile_supported is is_compile_supported
    """)


def test_only_methods_are_decorated_on_use():
    _python("""
        import sys
        import torch
        from scan_cli.backbones.heavy import _dynamo_deferred

        with _dynamo_deferred():
            class Model(torch.nn.Module):
                @torch.compiler.disable
                def forward(self, x):
                    return x + 1
            assert "torch._dynamo" not in sys.modules  # a method: deferred

            def plain(x):
                return x
            wrapped = torch.compiler.disable(plain)  # a plain function: decorated now, for real
            assert "torch._dynamo" in sys.modules and getattr(wrapped, "_torchdynamo_disable", False)
        assert Model().forward(torch.ones(1)).item() == 2.0
        assert getattr(Model.forward, "_torchdynamo_disable", False) is True
    """)
