"""What ``--against`` found, in words and as pinpoint.json's record: the first op that differs
from the commit, the settings that differ, what was tried here, and the cause. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detflow.against_cause import Setting, cause_record, env_command, env_words
from detflow.against_compare import ALIGN_WINDOW, Found

DISK_ENVIRONMENT = Path("data/environment.json")


@dataclass(frozen=True)
class Tried:
    setting: Setting
    op_agrees: bool  # the op that differed gave the commit's outputs
    run_agrees: bool  # every traced op and the seed's results did


@dataclass(frozen=True)
class AgainstReport:
    rev: str
    seed: int
    commit_summary: dict[str, Any]
    here_summary: dict[str, Any]
    found: Found | None
    results_agree: bool
    description: Any  # pinpoint_report.Divergence of the first difference, if any
    size: str | None  # how much that op's outputs differ, in words, where the sums tell
    sums: dict[str, float | None] | None  # that op's output sums, here and at the commit
    settings: tuple[Setting, ...]
    tried: tuple[Tried, ...]
    cause: Setting | None
    reproduced: bool
    # How this run's environment differs from the one the result on disk was made in
    # (data/environment.json): then this run does not describe that result.
    disk_differences: tuple[str, ...] = ()

    @property
    def agreed(self) -> bool:
        return self.found is None and self.results_agree

    @property
    def exit_code(self) -> int:
        return 0 if self.agreed else 1

    def lines(self) -> list[str]:
        env = self.commit_summary.get("environment", {})
        made = ", ".join(
            env.get(key, "?") for key in ("cpu_model", "cpu_capability", "torch_version")
        )
        ops = self.commit_summary.get("ops")
        lines = [
            f"pinpoint --against {self.rev}: torch_seed {self.seed}, the commit's reference "
            f"trace ({ops} ops, made on {made}, {env.get('intra_op_threads', '?')} threads) "
            f"against a run here"
        ]
        lines += self.difference_lines()
        differing = "; ".join(s.words() for s in self.settings) or "none"
        lines.append(f"settings that differ: {differing}")
        if not self.agreed:
            lines += self.cause_lines()
        if self.disk_differences:
            lines.append(
                f"note: this run's environment is not the one {DISK_ENVIRONMENT} records for "
                f"the result on disk ({'; '.join(self.disk_differences[:3])}, the result's "
                f"first): run this command in that environment to explain that result"
            )
        return lines

    def difference_lines(self) -> list[str]:
        if self.agreed:
            return [
                "no difference: every traced op gave the commit's outputs, and the seed's "
                "results the commit's digests"
            ]
        found, described = self.found, self.description
        if found is None:
            return [
                "every traced op gave the commit's outputs, but the seed's results did not: "
                "the difference lies past the reference's prefix or outside torch's ops"
            ]
        lines = []
        if found.parted is not None:
            c, _, ours, theirs = found.parted
            lines.append(
                f"the op sequences part at op #{c}: the commit ran {ours} where this run ran "
                f"{theirs} (another torch decomposes ops otherwise); aligned by op name"
            )
        if found.kind == "ended":
            lines.append(f"the traces part at op #{found.commit_index}: one of them ends there")
            return lines
        if found.kind == "path":
            lines.append(
                f"no aligned op gave other outputs within {ALIGN_WINDOW} ops of op "
                f"#{found.commit_index}"
            )
            return lines
        where = ""
        if found.here_index != found.commit_index:
            where = f" (op #{found.here_index} here)"
        module = "outside any module"
        if described.module:
            module = f"in module {described.module} ({described.module_class})"
        source = f", from {described.source}" if described.source else ""
        verb = "first op that differs from the commit"
        lines.append(
            f"{verb}: op #{found.commit_index}{where} {described.op} ({described.phase}) "
            f"{module}{source}"
        )
        if described.via:
            lines.append(f"  called at {described.via}")
        if described.inputs_equal:
            lines.append(
                "  its inputs equal the commit's and its outputs differ: this kernel computes "
                "differently here"
            )
            if self.size:
                lines.append(f"  {self.size}")
        else:
            lines.append(
                "  its inputs already differ from the commit's, though every earlier traced op "
                "agreed: the data came from outside torch's ops"
            )
        return lines

    def cause_lines(self) -> list[str]:
        lines = []
        at_op = f"op #{self.found.commit_index}" if self.found else "every traced op"
        for tried in self.tried:
            words = env_words(tried.setting.env or {})
            if tried.run_agrees:
                alone = "together" if ", " in tried.setting.field else "alone"
                digests = ", ".join(
                    f"{k} {v}" for k, v in self.commit_summary.get("results", {}).items()
                )
                lines.append(
                    f"cause: {tried.setting.words()}: with {words} {alone}, {at_op} gives the "
                    f"commit's outputs, and the whole run the commit's digests ({digests})"
                )
                prefix = env_command(tried.setting.env or {})
                lines.append(
                    f"  to reproduce the commit's numbers here: `{prefix}dvc repro` (check: "
                    f"`{prefix}python -m detflow.pinpoint --against {self.rev}` exits 0)"
                )
                return lines
            state = "gives the commit's outputs there, but the run still differs later"
            if not tried.op_agrees:
                state = "still gives other outputs there"
            lines.append(f"tried {words}: {at_op} {state}")
        remaining = [s for s in self.settings if s.env is None]
        for setting in remaining:
            lines.append(f"remaining difference: {setting.words()}: {setting.fix}")
        if not remaining:
            lines.append(
                "remaining difference: none of the recorded settings that this machine can set "
                "gives the commit's bits: the code, or a setting detflow does not record, "
                "differs; portable: true on both machines makes CPU runs agree"
            )
        return lines

    def record(self) -> dict[str, Any]:
        found, described = self.found, self.description
        detail: dict[str, Any] = dict.fromkeys(
            ("kind", "op_index", "op_index_here", "op", "phase", "module", "module_class")
        )
        detail.update(dict.fromkeys(("source", "via", "inputs_equal", "parted")))
        if found is not None:
            detail.update(kind=found.kind, op_index=found.commit_index)
            detail.update(op_index_here=found.here_index)
            if found.parted is not None:
                c, _, ours, theirs = found.parted
                detail["parted"] = {"op_index": c, "commit_op": ours, "here_op": theirs}
            if described is not None:
                for key in ("op", "phase", "module", "module_class", "source", "via"):
                    detail[key] = getattr(described, key)
                detail["inputs_equal"] = described.inputs_equal
        return {
            "against": self.rev,
            "diverged": not self.agreed,
            "torch_seed": self.seed,
            "reference_ops": self.commit_summary.get("ops"),
            **detail,
            "output_sums": self.sums,
            "settings_differ": {
                s.field: {"here": s.here, "commit": s.commit} for s in self.settings
            },
            "tried": [
                {"env": t.setting.env, "op_agrees": t.op_agrees, "run_agrees": t.run_agrees}
                for t in self.tried
            ],
            "environment_cause": None if self.agreed else cause_record(self.cause, self.reproduced),
        }
