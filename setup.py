"""Build step that pyproject.toml cannot express: ship ``slowed_peft_hook.pth`` at the root of site-packages.

Everything else lives in ``pyproject.toml``. The ``.pth`` is copied into ``build_lib`` for a normal wheel, and into
the unpacked editable wheel (setuptools' ``install_lib`` directory) for ``pip install -e``, so both installs get the
start-up hook of ``_slowed_peft_hook.py``.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


PTH = "slowed_peft_hook.pth"


class BuildPyWithHook(build_py):
    """``build_py`` that also places the start-up ``.pth`` file at the wheel root."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH), os.path.join(target, PTH))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH))
        return outputs


setup(cmdclass={"build_py": BuildPyWithHook})
