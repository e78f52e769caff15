"""Start-up hook of ``slowed-peft``: register the ``SLOWED`` PEFT type the moment ``peft`` is imported.

The wheel installs ``slowed_peft_hook.pth`` next to this module; Python's ``site`` runs its one line at interpreter
start. Unless ``SLOWED_PEFT_NO_HOOK`` is set (then this module is not even imported), all it does is put
:class:`_PeftImportWatcher` on ``sys.meta_path`` (no other import: ``os`` and ``sys`` are already loaded by ``site``). When a process imports ``peft`` — ``PeftModel``, ``AutoPeftModelForCausalLM``, the
``lm_eval`` CLI, TRL, any tool built on peft — the watcher lets peft import as usual, then imports ``slowed_peft``,
which registers the type. So adapters with ``"peft_type": "SLOWED"`` load without ``import slowed_peft``.

Set ``SLOWED_PEFT_NO_HOOK=1`` to turn it off (PEFT then raises ``KeyError: 'SLOWED'`` unless ``slowed_peft`` is
imported). The watcher removes itself once peft is imported, and a failure to register is a warning (once per process),
never an error in peft's own import, whatever ``slowed_peft`` raised. The ``.pth`` line is silent when this module is
gone (a moved or deleted editable clone): it only imports it inside ``try``/``except ImportError``.
"""

from __future__ import annotations

import os
import sys


ENV_DISABLE = "SLOWED_PEFT_NO_HOOK"
WATCHED = "peft"


_warned = False


def _register() -> None:
    """Import ``slowed_peft`` (registers ``SLOWED``) unless it is already being imported, which registers it too.

    Whatever that import raises — ``SystemExit`` and other ``BaseException`` included, only ``KeyboardInterrupt``
    goes through — becomes one warning per process: the user's ``import peft`` never fails because of this hook."""
    global _warned
    if "slowed_peft" in sys.modules:
        return
    try:
        import slowed_peft  # noqa: F401
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # never break the user's ``import peft``, nor end the process
        if _warned:
            return
        _warned = True
        import warnings

        warnings.warn(
            f"slowed-peft start-up hook: could not register the SLOWED PEFT type ({type(exc).__name__}: {exc}); "
            f"`import slowed_peft` before loading SLOWED adapters, or set {ENV_DISABLE}=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )


class _PeftImportWatcher:
    """A ``sys.meta_path`` finder that only answers for ``peft``: it finds peft's real spec with the other finders
    and wraps that spec's ``exec_module`` so :func:`_register` runs right after peft's ``__init__`` finished."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != WATCHED:
            return None
        # ``importlib.util.find_spec("peft")`` (transformers' ``is_peft_available``) also lands here without
        # importing: every spec handed out is wrapped, and the watcher leaves only once peft has really executed.
        for finder in sys.meta_path:
            if isinstance(finder, _PeftImportWatcher):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_register(module):
            exec_module(module)
            uninstall()
            _register()

        loader.exec_module = exec_and_register  # this loader instance serves only ``peft``
        return spec


def uninstall() -> None:
    """Remove the watcher from ``sys.meta_path`` (done automatically on the first ``import peft``)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PeftImportWatcher)]


def install() -> bool:
    """Put the watcher on ``sys.meta_path`` unless disabled or ``peft`` is already imported; True if installed."""
    if os.environ.get(ENV_DISABLE, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if WATCHED in sys.modules:
        if "slowed_peft" not in sys.modules:
            _register()
        return False
    if not any(isinstance(f, _PeftImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportWatcher())
    return True
