"""The loader: a short-lived child that compiles bpf/*.c with bcc, attaches, pins, exits.

    python -m sidecar.bpf.loader --plan JSON [--owner-pid PID]
    python -m sidecar.bpf.loader -c FILE [--instance NAME] [--owner-pid PID]
    python -m sidecar.bpf.loader ... --print-cflags      the compiler flags of each file
    python -m sidecar.bpf.loader ... --print-c           also the C as bcc compiles it

The only module that imports bcc (with LLVM, ~130 MB): the manager runs it as a child
(sidecar.interception.ebpf) and it exits, so the pod pays that memory for a second, not
for its lifetime. With `-c FILE` (what `sidecar bpf load -c FILE` runs, in an init
container) and no --owner-pid, nobody waits for it: the instance is handed over
(sidecar.bpf.handover) for the sidecar that starts next to adopt, and where BPF is
unavailable and `interception.fail` is open it says why and exits 0, so the pod still
starts (its sidecar then runs without interception). Steps, each timed:

    1. preflight (sidecar.bpf.preflight): privileges, bpffs, the attach points (never the
       root cgroup, never a host interface), kernel headers, bcc
    2. claim /sys/fs/bpf/sidecar/<instance>/: state left by an owner that is gone (kill -9)
       is removed; an owner that is alive refuses the load; the owner record is pinned
    3. compile each wanted family (sidecar.bpf.programs.FAMILIES) with bcc (`src_file=`,
       flags from `cflags_for`); its maps are pinned by BPF_TABLE_PINNED
    4. load each program, with its expected attach type where the kernel needs one
    5. write the config maps (exclusions) and the sidecar's cgroup (sc_sidecar_cg: this
       process's, which is the manager's), attach each program with a bpf link and pin it
    6. handing over: mark the owner record handed over, with the plan's fingerprint
    7. print one JSON line on stdout (timings, peak RSS), exit 0

On any failure after step 2 everything of the instance is removed again, a one-line
reason goes to stderr (and in the JSON line), and the exit code says what the manager
does (sidecar.bpf: EXIT_CONFIG refuses to start; EXIT_UNAVAILABLE applies
interception.fail). A loader killed half way leaves only pinned maps and the owner
record (links are pinned only once created), which the next start replaces.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import resource
import sys
import tempfile
import time

from sidecar.bpf import BPFFS_ROOT, EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, syscall
from sidecar.bpf import config_maps
from sidecar.bpf.cleanup import remove_instance
from sidecar.bpf.handover import fingerprint, handed_over_record
from sidecar.bpf.layout import ATTACH_TYPE_NAMES
from sidecar.bpf.pod_cgroup import write_sidecar_cgroup
from sidecar.bpf.preflight import Refusal, cgroup2_mount, run_all
from sidecar.bpf.programs import BPF_DIR, TARGETS, Plan, cflags_for, plan_from_config, wanted_families
from sidecar.bpf.state import (
    instance_dir, links_dir, maps_dir, owner_liveness, owner_record, read_owner, update_owner,
    write_owner)

DEBUG_PREPROCESSOR = 0x4      # bcc: print the clang command and the C as compiled
ENOTSUPP = 524                # the kernel's own "not supported" (no Python name)


class CapturedStderr:
    """Collects what C code (clang, libbpf, the verifier log) writes to fd 2."""

    def __enter__(self):
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()


_VERIFIER_SUMMARY = ("processed ", "verification time", "stack depth", "HINT:", "bpf: Failed",
                     "-- END PROG LOAD LOG --")
_INSN = re.compile(r"^\d+: \(|^;|^from \d+ to \d+|^Validating |^Func#|^func#|^last_idx|^regs=|^parent ")


def _first_error(text: str, fallback: str) -> str:
    """The telling part of a compiler or verifier log, on one line: clang's first error,
    or the verifier's verdict (the lines after the last instruction it walked, before its
    summary)."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for line in lines:
        if "error:" in line:
            return line
    verdict = []
    for line in reversed(lines):
        if line.startswith(_VERIFIER_SUMMARY):
            if verdict:
                break
            continue
        if _INSN.match(line):
            break
        verdict.insert(0, line)
    return "; ".join(verdict) if verdict else fallback


class Loader:
    def __init__(self, plan: Plan, owner_pid: int, root: str = BPFFS_ROOT, handover: bool = False):
        self.plan = plan
        self.owner_pid = owner_pid
        self.handover = handover     # for a sidecar to come (sidecar.bpf.handover)
        self.path = instance_dir(plan.instance, root)
        self.timings = {}
        self.modules = []            # keep bcc modules (their fds) until the links are pinned
        self.replaced = None
        self.created = False         # the instance directory is ours to remove on failure

    def _timed(self, name, started):
        self.timings[name] = round(time.monotonic() - started, 4)

    def run(self) -> dict:
        t0 = time.monotonic()
        targets = run_all(self.plan)
        self._timed("preflight", t0)
        config_maps.check(self.plan)
        self.check_owner()
        try:
            self.claim(targets)
            t = time.monotonic()
            from bcc import BPF
            self._timed("import_bcc", t)
            programs = self.compile_and_load(BPF)
            t = time.monotonic()
            config_maps.sync(self.path, self.plan)
            # Before anything is attached: the sidecar's connects are never redirected.
            excluded = write_sidecar_cgroup(self.path, targets.own_cgroup, cgroup2_mount())
            links = self.attach(programs, targets)
            self._timed("attach", t)
            if self.handover:
                update_owner(self.path, handed_over_record(read_owner(self.path), self.plan))
        except BaseException:
            if self.created:
                remove_instance(self.path)
            raise
        self.timings["total"] = round(time.monotonic() - t0, 4)
        return {"ok": True, "instance": self.plan.instance, "path": self.path,
                "replaced": self.replaced, "links": links, "timings": self.timings,
                "handed_over": self.handover, "fingerprint": fingerprint(self.plan),
                "sidecar_cgroup_excluded": excluded,
                "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}

    # -- 2. claim -------------------------------------------------------------------------

    def check_owner(self):
        """Refuses an instance whose owner lives; removes the state of one that is gone."""
        if os.path.isdir(self.path):
            owner = read_owner(self.path)
            alive, why = owner_liveness(owner, self.path)
            mine = owner is not None and owner.get("pid") == self.owner_pid
            # A handed-over instance nobody adopted yet belongs to no process: a loader run
            # again (an init container restarted) or one the sidecar runs replaces it.
            handed_over = owner is not None and owner.get("handed_over") and alive is None
            if alive is not False and not mine and not handed_over:
                raise Refusal(EXIT_CONFIG, "instance %s is in use: %s (another sidecar in this pod? "
                                           "set interception.instance, or `sidecar bpf cleanup "
                                           "--instance %s --force` if it is not)"
                              % (self.plan.instance, why, self.plan.instance))
            removed = remove_instance(self.path)
            self.replaced = {"reason": why, "links": len(removed["links"]),
                             "maps": len(removed["maps"])}

    def claim(self, targets):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            os.mkdir(self.path)
        except FileExistsError:
            raise Refusal(EXIT_CONFIG, "instance %s is being loaded by another process at the "
                                       "same moment" % self.plan.instance)
        self.created = True
        os.mkdir(maps_dir(self.path))
        os.mkdir(links_dir(self.path))
        write_owner(self.path, owner_record(
            self.owner_pid, mode="ebpf", instance=self.plan.instance,
            app_cgroup=targets.app_cgroup, sidecar_cgroup=targets.sidecar_cgroup,
            interface=targets.interface, ifindex=targets.ifindex,
            families=[f.name for f in wanted_families(self.plan)],
            interception=self.plan.interception, fingerprint=fingerprint(self.plan)))

    # -- 3, 4. compile and load -------------------------------------------------------------------

    def compile_and_load(self, BPF) -> list:
        """[(family, program, fd)] of every wanted program, loaded."""
        flags = cflags_for(self.plan, maps_dir(self.path))
        loaded = []
        self.timings["compile"] = {}
        self.timings["load"] = 0.0
        for family in wanted_families(self.plan):
            source = os.path.join(BPF_DIR, family.source)
            t = time.monotonic()
            with CapturedStderr() as err:
                try:
                    module = BPF(src_file=source.encode(), cflags=flags)
                except Exception as e:
                    failure = e
                else:
                    failure = None
            if failure is not None:
                raise Refusal(EXIT_UNAVAILABLE, "cannot compile %s: %s" % (
                    family.source, _first_error(err.text, str(failure)).replace(
                        "/virtual/main.c", family.source)))
            self.timings["compile"][family.source] = round(time.monotonic() - t, 4)
            self.modules.append(module)
            for prog in family.programs:
                t = time.monotonic()
                attach = prog.attach_type if prog.expected_attach_type else -1
                with CapturedStderr() as err:
                    try:
                        fn = module.load_func(prog.function.encode(), prog.prog_type,
                                              attach_type=attach)
                    except Exception as e:
                        failure = e
                    else:
                        failure = None
                if failure is not None:
                    raise Refusal(EXIT_UNAVAILABLE, "the kernel refused %s (%s): %s" % (
                        prog.function, family.source, _first_error(err.text, str(failure))))
                loaded.append((family, prog, fn.fd))
                self.timings["load"] = round(self.timings["load"] + time.monotonic() - t, 4)
        return loaded

    # -- 5. attach ---------------------------------------------------------------------------------

    def attach(self, programs, targets) -> list:
        """Attaches each program with a bpf link to its target (in FAMILIES order, so
        programs sharing a tcx hook run in that order: each link is appended, or put
        before the others for a `Program(first=True)`) and pins the link as
        links/<function>."""
        out = []
        for family, prog, prog_fd in programs:
            where, target, owned_fd = _TARGETS[prog.target](targets, prog, self.path)
            try:
                link = syscall.link_create(prog_fd, target, prog.attach_type,
                                           syscall.BPF_F_BEFORE if prog.first else 0)
            except OSError as e:
                reason = "cannot attach %s (%s) to %s: %s" % (
                    prog.function, ATTACH_TYPE_NAMES.get(prog.attach_type), where, e.strerror)
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                    reason += " (the kernel lacks %s)" % family.kernel
                raise Refusal(EXIT_UNAVAILABLE, reason)
            finally:
                if owned_fd is not None:
                    os.close(owned_fd)
            try:
                syscall.obj_pin(link, os.path.join(links_dir(self.path), prog.function))
            finally:
                os.close(link)
            out.append({"function": prog.function, "family": family.name,
                        "attach_type": ATTACH_TYPE_NAMES.get(prog.attach_type), "target": where})
        return out


def _cgroup_target(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    return path, fd, fd


def _map_target(prog, instance_path):
    """The instance's pinned map `prog.target_map` (its family pinned it at compile time)."""
    fd = syscall.obj_get(os.path.join(maps_dir(instance_path), prog.target_map))
    return "map %s" % prog.target_map, fd, fd


# programs.TARGETS -> resolver(targets, program, instance path) -> (what to call it,
# BPF_LINK_CREATE target, an fd to close afterwards or None). A new kind of attach point
# is one more entry here and in programs.TARGETS.
_TARGETS = {
    "app_cgroup": lambda t, prog, path: _cgroup_target(t.app_cgroup),
    "sidecar_cgroup": lambda t, prog, path: _cgroup_target(t.sidecar_cgroup),
    "interface": lambda t, prog, path: (t.interface, t.ifindex, None),
    "map": lambda t, prog, path: _map_target(prog, path),
}
assert set(_TARGETS) == set(TARGETS)


# -- command line ---------------------------------------------------------------------------------

def _plan_from_args(args) -> Plan:
    if args.plan:
        return Plan.from_json(args.plan)
    from sidecar.config import load_config
    from sidecar.bpf.state import default_instance
    cfg = load_config(args.config)
    return plan_from_config(cfg, args.instance or default_instance(cfg))


def _print_flags(plan: Plan, with_c: bool) -> int:
    map_dir = maps_dir(instance_dir(plan.instance))
    for family in wanted_families(plan):
        print("%s: %s" % (os.path.join(BPF_DIR, family.source), " ".join(cflags_for(plan, map_dir))))
    if not with_c:
        return EXIT_OK
    # The C as bcc compiles it; maps are pinned in a scratch instance, removed afterwards.
    from bcc import BPF
    scratch = instance_dir("print-c-%d" % os.getpid())
    os.makedirs(maps_dir(scratch))
    try:
        for family in wanted_families(plan):
            sys.stderr.flush()
            BPF(src_file=os.path.join(BPF_DIR, family.source).encode(),
                cflags=cflags_for(plan, maps_dir(scratch)), debug=DEBUG_PREPROCESSOR)
    finally:
        remove_instance(scratch)
    return EXIT_OK


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sidecar.bpf.loader",
                                description="compile, attach and pin the sidecar's BPF programs, then exit")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--plan", help="the load plan as JSON (what the manager passes)")
    src.add_argument("-c", "--config", help="derive the plan from this config file")
    p.add_argument("--instance", help="with -c: the instance name (default: from the config)")
    p.add_argument("--owner-pid", type=int,
                   help="the process the kernel state belongs to (default with --plan: the parent; "
                        "with -c: none, the instance is handed over)")
    p.add_argument("--print-cflags", action="store_true", help="print each file's compiler flags and exit")
    p.add_argument("--print-c", action="store_true", help="also print the C as bcc compiles it (on stderr)")
    args = p.parse_args(argv)
    from sidecar.config import ConfigError
    try:
        plan = _plan_from_args(args)
    except ConfigError as e:
        print("loader: %s" % e, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if args.print_cflags or args.print_c:
        return _print_flags(plan, args.print_c)
    handover = args.owner_pid is None and args.config is not None
    owner_pid = args.owner_pid if args.owner_pid is not None else (
        os.getpid() if handover else os.getppid())
    try:
        result = Loader(plan, owner_pid, handover=handover).run()
    except Refusal as e:
        print(json.dumps({"ok": False, "code": e.code, "reason": e.reason}), flush=True)
        print("loader: %s" % e.reason, file=sys.stderr, flush=True)
        if handover and e.code == EXIT_UNAVAILABLE and plan.fail_open:
            print("loader: interception.fail is open: nothing loaded; the sidecar will run "
                  "without interception", file=sys.stderr, flush=True)
            return EXIT_OK
        return e.code
    except ValueError as e:        # a plan the maps cannot hold
        print(json.dumps({"ok": False, "code": EXIT_CONFIG, "reason": str(e)}), flush=True)
        print("loader: %s" % e, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    print(json.dumps(result), flush=True)
    if handover:
        print("loader: instance %s loaded (%d programs, plan %s) in %.2fs and handed over to the "
              "sidecar that starts next with this config" % (
                  plan.instance, len(result["links"]), result["fingerprint"][:12],
                  result["timings"]["total"]), file=sys.stderr, flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
