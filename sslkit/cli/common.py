"""What every command shares: option declarations, error handling and result output."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import typer

from sslkit import console, files
from sslkit.cli.generate import Parameter, argument, command, given_settings, option, settings_options
from sslkit.errors import Interrupted, TrainingFailed, UsageError

QUIET_HELP = "Print nothing but errors (results still go to --json)."
DRY_RUN_HELP = ("Train nothing: resolve every setting exactly as the run would (presets, lr scaled with the batch, "
                "warm-up, the data set's size and path), print them with each schedule's start, peak and end, and "
                "draw RUN/schedules.png when --out is new or empty. Never touches an existing run; command line "
                "only, never from --config.")


def writable_file(path: Path | None) -> Path | None:
    """An option's callback: an output file that cannot be written is refused while the command line is read,
    before any work."""
    if path is not None:
        try:
            files.check_output_file(path, "")
        except UsageError as error:
            raise typer.BadParameter(str(error).strip()) from None
    return path


JSON_HELP = "Also write the results as JSON to this file."


def fail(message: str, code: int) -> typer.Exit:
    print(f"error: {console.printable(message)}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def handle_errors(quiet: bool = False):
    """Known errors become one line on stderr and the exit code of DESIGN.md section 2, never a traceback."""
    was_quiet = console.is_quiet()
    console.set_quiet(quiet)
    try:
        yield
    except UsageError as error:
        raise fail(_one_line(str(error)), 2) from None
    except TrainingFailed as error:
        raise fail(_one_line(str(error)), 1) from None
    except Interrupted as error:
        print(console.printable(str(error)), file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except Exception as error:
        if os.environ.get("SSLKIT_DEBUG"):
            raise
        if _out_of_memory(error):
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise fail(f"out of memory ({first_line}); {MEMORY_HINT}", 1) from None
        message = f"{type(error).__name__}: {_one_line(str(error))}"
        raise fail(f"{message} (set SSLKIT_DEBUG=1 for the traceback)", 1) from None
    finally:
        console.set_quiet(was_quiet)


def _one_line(message: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's whole traceback in its message: its
    last line is the error itself."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1].strip()
    name, _, text = last.partition(": ")
    return text if text and " " not in name else last


MEMORY_HINT = ("lower --batch-size, or keep it and add --accum-steps N (the same result in N smaller passes), "
               "or use --precision bf16; a resumed run continues from its last checkpoint")


def _out_of_memory(error: Exception) -> bool:
    torch = sys.modules.get("torch")  # loaded by any command that can run out of memory
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error)


def write_json(path: Path | None, results: dict) -> None:
    if path is not None:
        files.write_json(path, results)


JSON_OPTION = option("json_path", Optional[Path], "--json", help=JSON_HELP, callback=writable_file)
MODEL_HELP = ("A run directory, an sslkit .safetensors checkpoint, an official DINO / MAE .pth, timm:ARCH (random "
              "init) or pixels:N (an N x N thumbnail, the no-learning baseline).")
IMAGES = argument("images", list[Path], "Image files or folders (searched recursively).")
QUIET_OPTION = option("quiet", bool, "--quiet", "-q", default=False, help=QUIET_HELP)


def images_command(verb: str, settings: type, model_help: str, out_help: str, show: Callable[[dict], None]):
    """``sslkit VERB MODEL IMAGE... --out DIR`` (attention, reconstruct): ``sslkit.api.VERB`` with the given
    ``settings``, its results shown by ``show``."""
    def run(model: str, images: list[Path], out: Path, json_path: Optional[Path], quiet: bool, **values):
        with handle_errors(quiet):
            from sslkit import api  # imports torch: only once a command runs

            results = getattr(api, verb)(model, images, out, **given_settings(values, settings))
            report(results, json_path, quiet, show)

    out = option("out", Path, "--out", "-o", default=Parameter.empty, help=out_help)
    return command([argument("model", str, model_help), IMAGES, out, *settings_options(settings), JSON_OPTION,
                    QUIET_OPTION], run, first=(None,), last=("Hardware",))


def report(results: dict, json_path: Path | None, quiet: bool, show: Callable[[dict], None],
           dry_run: bool = False) -> None:
    """A command's results: to --json, then, unless --quiet, shown (a dry run's plan by show_plan)."""
    write_json(json_path, results)
    if not quiet:
        (show_plan if dry_run else show)(results)


def examples(*lines: str) -> str:
    """An epilog for --help: a few example command lines."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]{line}[/cyan]" for line in lines)


def show_plan(plan: dict) -> None:
    """A dry run's plan (sslkit.engine.dryrun.plan) on stdout: the resolved settings, each schedule's start,
    peak and end, and where its picture went or why it was not drawn."""
    from sslkit.visualize.schedules import PLAN_NAME

    say = partial(console.stdout.print, soft_wrap=True, markup=False)
    say(f"dry run of {plan['command']}: {plan['num_images']} images, {plan['steps_per_epoch']} steps per epoch x "
        f"{plan['epochs']} epochs = {plan['total_steps']} steps, batch {plan['batch_size']}; nothing is trained")
    console.stdout.print(_settings_table(plan["settings"]))
    console.stdout.print(_schedules_table(plan["summary"], plan["at_resume"]))
    frozen, steps = plan["last_layer_frozen_epochs"], plan["steps_per_epoch"]
    if frozen:
        say(f"last layer frozen (no update) in epochs {frozen[0]}-{frozen[-1]}: logged steps "
            f"{(frozen[0] - 1) * steps + 1}-{frozen[-1] * steps}")
    for note in plan["notes"]:
        say(console.printable(note))
    if plan["refusal"]:
        console.warn(f"the run itself would stop: {plan['refusal']}")
    if plan["picture"]:
        say(f"schedules: {console.printable(plan['picture'])}")
    else:
        say(f"{PLAN_NAME} not written: {console.printable(plan['not_written'])}; the table above is the plan")


def _settings_table(settings: dict):
    """One row per setting, by section (train, the method's, decided, ...); values as text, never markup."""
    from rich.table import Table
    from rich.text import Text

    table = Table("section", "setting", "value", title="resolved settings", title_justify="left")
    for section, values in settings.items():
        rows = values.items() if isinstance(values, dict) else [("", values)]
        for i, (name, value) in enumerate(rows):
            table.add_row(Text(section if i == 0 else ""), Text(name), Text(console.printable(_shown(value))))
    return table


def _schedules_table(summary: dict, at_resume: dict | None):
    """Each schedule's start, peak and end (and a resumed run's value at its first step)."""
    from rich.table import Table

    from sslkit.visualize.schedules import TITLES

    table = Table("schedule", "start", "peak", "end", *(["at resume"] if at_resume else []),
                  title="schedules over the optimizer steps", title_justify="left")
    for name, values in summary.items():
        resumed = [_shown(at_resume[name])] if at_resume else []
        table.add_row(TITLES.get(name, name), *(_shown(values[k]) for k in ("start", "peak", "end")), *resumed)
    return table


def _shown(value) -> str:
    """A setting's value as the plan's table shows it."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    return str(value)
