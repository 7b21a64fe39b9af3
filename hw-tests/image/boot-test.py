#!/usr/bin/env python3
"""Boot the built vvgate image in qemu with OVMF and Secure Boot enforced, and check it.

    hw-tests/image/boot-test.py [--out image/out] [--keys DIR] [--only NAME ...]

Needs what image/build made in --out: disk.raw, bundle/, keys/ (PK, KEK, db certificates;
--keys when they were elsewhere), producer/ (the dev configuration's producer credentials),
officers/ (the two re-arm officers' secrets), roothash; and vvctl (--vvctl, default
target/release/vvctl). Host packages: qemu-system-x86 qemu-utils ovmf mtools fdisk sbsigntool, and virt-firmware
(pip) to enroll the dev keys into a copy of the OVMF variable store.

Each check boots its own copy-on-write overlay of the disk and prints PASS/FAIL with the seconds
it took. ttyS0 (the kernel console, the log) goes to a file; ttyS1, the operator console
(vvgate-console), is a socket the kill-switch check types into.

KVM is used only when /dev/kvm works and the CPU offers vmx or svm; otherwise TCG,
with marker timeouts of several minutes.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
OWNER = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d"  # owner GUID of the dev keys in the variable store
TIMEOUT = float(os.environ.get("VVGATE_BOOT_TIMEOUT", "600"))


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def accel():
    try:
        cpu = open("/proc/cpuinfo").read()
        if os.access("/dev/kvm", os.W_OK) and (" vmx" in cpu or " svm" in cpu):
            return ["-accel", "kvm", "-cpu", "host"]
    except OSError:
        pass
    return ["-accel", "tcg"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serial:
    """The host end of a guest serial port (a qemu socket chardev). A thread reads everything
    (a client that does not read stalls the guest's output)."""

    def __init__(self, path, timeout=60):
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        self.buf = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.buf += data

    def mark(self):
        with self.lock:
            return len(self.buf)

    def text(self, since=0):
        with self.lock:
            return self.buf[since:].decode("utf-8", "replace")

    def wait(self, marker, since, timeout=TIMEOUT):
        """Wait for `marker` after offset `since`; return the offset just past it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                i = self.buf.find(marker.encode(), since)
                if i >= 0:
                    return i + len(marker)
            time.sleep(0.1)
        raise AssertionError(f"no {marker!r} on the operator console; it said: {self.text(since)[-600:]!r}")

    def type(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def command(self, line, *answers, timeout=TIMEOUT):
        """Type `line` at the prompt; each of `answers` is (expected prompt, reply). Return what
        the console printed up to its next prompt."""
        at = self.mark()
        self.type(line)
        for prompt, reply in answers:
            at = self.wait(prompt, at, timeout)
            self.type(reply)
        end = self.wait("vvgate> ", at, timeout)
        return self.text(at)[: end - at]

    def close(self):
        self.sock.close()


class Vm:
    """One qemu run on an overlay of a disk; ttyS0 (the kernel console) goes to a log file,
    ttyS1 (the operator console) to a socket."""

    def __init__(self, work, name, disk, vars_fd):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.overlay = os.path.join(self.dir, "overlay.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", os.path.abspath(disk), self.overlay)
        self.vars = os.path.join(self.dir, "vars.fd")
        shutil.copy(vars_fd, self.vars)
        self.log = os.path.join(self.dir, "console.log")
        self.operator = os.path.join(self.dir, "ttyS1.sock")
        self.port = free_port()
        self.proc = None
        self.boots = 0

    def start(self):
        cmd = ["qemu-system-x86_64", *accel(), "-m", "1024", "-smp", "2", "-display", "none",
               "-nodefaults", "-no-reboot", "-monitor", "none",
               "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
               "-drive", f"file={self.overlay},format=qcow2,if=virtio",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:8443",
               "-device", "virtio-net-pci,netdev=n0",
               "-chardev", f"file,id=con,path={self.log}", "-serial", "chardev:con",
               "-chardev", f"socket,id=op,path={self.operator},server=on,wait=off", "-serial", "chardev:op",
               "-device", "virtio-rng-pci"]
        self.boots += 1
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "qemu.err"), "w"))
        return self

    def text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, *markers, timeout=TIMEOUT):
        """The first of `markers` that appears on the console, or None when qemu exits or time
        runs out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            for m in markers:
                if m in t:
                    return m
            if self.proc.poll() is not None:
                t = self.text()
                return next((m for m in markers if m in t), None)
            time.sleep(0.5)
        return None

    def line(self, marker):
        return next((l for l in self.text().splitlines() if marker in l), "")

    def elapsed(self):
        return time.monotonic() - self.t0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def power_cycle(self):
        """Cut the power (qemu killed, nothing flushed by the guest) and boot the same disk
        and firmware variables again; the previous console log is kept as console-<n>.log."""
        self.stop()
        os.rename(self.log, os.path.join(self.dir, f"console-{self.boots}.log"))
        return self.start()

    def console(self):
        """The operator console on ttyS1, at its prompt."""
        c = Serial(self.operator)
        end = time.monotonic() + TIMEOUT
        while True:  # vvgate-console may still be starting; an empty line gets a new prompt
            at = c.mark()
            c.type("")
            try:
                c.wait("vvgate> ", at, timeout=5)
                return c
            except AssertionError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise


def audit_entries(status):
    m = re.search(r'"audit_entries":(\d+)', status)
    assert m, f"no audit_entries in the status answer: {status!r}"
    return int(m.group(1))


def partitions(disk):
    return json.loads(run("sfdisk", "-J", disk))["partitiontable"]["partitions"]


def esp_offset(disk):
    return partitions(disk)[0]["start"] * 512


def enrolled_vars(keys, work):
    """A copy of the OVMF variable store with the dev PK, KEK and db enrolled, Secure Boot on."""
    vars_fd = os.path.join(work, "vars-dev-keys.fd")
    run("virt-fw-vars", "-i", OVMF_VARS, "-o", vars_fd,
        "--set-pk", OWNER, os.path.join(keys, "PK.crt"),
        "--add-kek", OWNER, os.path.join(keys, "KEK.crt"),
        "--add-db", OWNER, os.path.join(keys, "db.crt"),
        "--sb")
    return vars_fd


def disk_copy(out, work, name):
    d = os.path.join(work, name + ".raw")
    run("cp", "--sparse=always", os.path.join(out, "disk.raw"), d)
    return d


def mtools(disk, *args):
    return run(args[0], "-i", f"{disk}@@{esp_offset(disk)}", *args[1:])


class Checks:
    def __init__(self, args):
        self.out = os.path.abspath(args.out)
        self.vvctl = os.path.abspath(args.vvctl)
        self.keys = os.path.abspath(args.keys or os.path.join(self.out, "keys"))
        self.work = tempfile.mkdtemp(prefix="vvgate-boot-")
        self.vars = enrolled_vars(self.keys, self.work)
        self.roothash = open(os.path.join(self.out, "roothash")).read().strip()
        self.failed = []

    def boot(self, name, disk):
        return Vm(self.work, name, disk, self.vars).start()

    def send(self, vm):
        p = os.path.join(self.out, "producer")
        return subprocess.run(
            [self.vvctl, "send", "--target", f"127.0.0.1:{vm.port}", "--server-name", "localhost",
             "--ca", f"{p}/ca.pem", "--cert", f"{p}/producer.pem", "--key", f"{p}/producer.key",
             "--signing-key", f"{p}/producer-signing.seed"],
            capture_output=True, text=True, timeout=120)

    def check(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
            print(f"PASS {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception as e:  # a failed check names what it saw; the run goes on
            print(f"FAIL {name} ({time.monotonic() - t0:.1f} s): {e}", flush=True)
            self.failed.append(name)

    # --- the checks ---------------------------------------------------------------------

    def secure_boot_ready_and_accepts_a_signed_event(self):
        vm = self.boot("good", os.path.join(self.out, "disk.raw"))
        try:
            m = vm.wait_for("VVGATE-READY", "Access Denied", "Kernel panic")
            assert m == "VVGATE-READY", f"no READY marker after {vm.elapsed():.0f} s (saw {m}); see {vm.log}"
            ready = vm.line("VVGATE-READY")
            print(f"     {ready.strip()} after {vm.elapsed():.1f} s")
            assert "secure_boot=1" in ready, "the firmware did not report Secure Boot on"
            assert "ro_root=true" in ready, "root is not read-only"
            assert f"roothash={self.roothash}" in ready, "booted another root hash"
            # The producer's signed event through the forwarded port.
            for attempt in range(30):
                r = self.send(vm)
                if r.returncode == 0 or "202" in r.stdout:
                    break
                time.sleep(2)
            assert r.stdout.startswith("202"), f"send: rc={r.returncode} {r.stdout} {r.stderr}"
            print(f"     event accepted: {r.stdout.strip()[:100]}")
        finally:
            vm.stop()

    def ready(self, vm):
        m = vm.wait_for("VVGATE-READY", "Access Denied", "Kernel panic")
        assert m == "VVGATE-READY", f"no READY marker after {vm.elapsed():.0f} s (saw {m}); see {vm.log}"
        print(f"     boot {vm.boots}: READY after {vm.elapsed():.1f} s")

    def accepted(self, vm):
        """A signed event is answered 202 (retried while the forwarded port comes up)."""
        for attempt in range(30):
            r = self.send(vm)
            if r.stdout.startswith("202"):
                return r.stdout.strip()
            time.sleep(2)
        raise AssertionError(f"send: rc={r.returncode} {r.stdout} {r.stderr}")

    def refused(self, vm, con):
        """The next signed event fails: 403 with the kill-switch reason, or the gateway drops
        the connection before the handshake. Through qemu's port forwarding a dropped
        connection looks like a port nobody listens on, so a refusal without an HTTP answer
        counts only when the gateway audited it (tls.rejected: `audit_entries` grows)."""
        before = audit_entries(con.command("status"))
        r = self.send(vm)
        said = (r.stdout + r.stderr).strip()
        assert not r.stdout.startswith("202"), f"accepted with the kill switch engaged: {said}"
        if r.stdout.startswith("403"):
            assert "Gateway kill switch engaged" in r.stdout, f"403 for another reason: {said}"
            return said.splitlines()[0][:120]
        assert r.returncode != 0 and not r.stdout.strip(), f"refused for another reason: rc={r.returncode} {said}"
        end = time.monotonic() + 30  # refusals are audited once a second, coalesced
        while audit_entries(con.command("status")) <= before:
            assert time.monotonic() < end, f"no audited refusal for: {said}"
            time.sleep(1)
        return f"handshake refused, audited ({said.splitlines()[0][:80] if said else r.returncode})"

    def kill_on_the_serial_console_survives_a_reboot_and_two_officers_rearm(self):
        officers = {}
        for name in ("security", "platform"):
            with open(os.path.join(self.out, "officers", f"{name}.secret")) as f:
                officers[name] = f.readline().strip()
        vm = self.boot("kill", os.path.join(self.out, "disk.raw"))
        try:
            self.ready(vm)
            print(f"     before: {self.accepted(vm)[:100]}")
            con = vm.console()
            t0 = time.monotonic()
            said = con.command("kill", ("reason: ", "boot test drill"))
            assert '"kill_switch":"engaged"' in said, f"kill: {said!r}"
            print(f"     kill acknowledged on ttyS1 in {1000 * (time.monotonic() - t0):.0f} ms")
            # The gateway names the console's own user (801, systemd/sysusers.d) in its log and audit.
            who = 'kill switch engaged via="console" uid=801'
            assert vm.wait_for(who, timeout=30) == who, f"no '{who}' in the log: {vm.line('kill switch engaged')!r}"
            print(f"     after kill: {self.refused(vm, con)}")
            con.close()

            vm.power_cycle()
            self.ready(vm)
            con = vm.console()
            said = con.command("status")
            assert '"kill_switch":"engaged"' in said, f"status after the power cycle: {said!r}"
            print(f"     after the power cycle: {self.refused(vm, con)}")
            # A wrong secret (the platform officer's, its last characters changed) does not re-arm.
            wrong = officers["platform"][:-4] + ("AAAA" if not officers["platform"].endswith("AAAA") else "BBBB")
            said = con.command("rearm", ("officer 1 name: ", "security"), ("officer 1 secret: ", officers["security"]),
                               ("officer 2 name: ", "platform"), ("officer 2 secret: ", wrong))
            assert '"kill_switch":"armed"' not in said, f"re-armed with a wrong secret: {said!r}"
            print(f"     wrong secret: {said.strip().splitlines()[-2][:100]}")
            self.refused(vm, con)
            said = con.command("rearm", ("officer 1 name: ", "security"), ("officer 1 secret: ", officers["security"]),
                               ("officer 2 name: ", "platform"), ("officer 2 secret: ", officers["platform"]))
            assert '"kill_switch":"armed"' in said, f"rearm: {said!r}"
            assert officers["platform"] not in con.text(), "a secret was echoed on the console"
            print(f"     after rearm: {self.accepted(vm)[:100]}")
            con.close()
        finally:
            vm.stop()

    def unsigned_boot_loader_is_refused(self):
        d = disk_copy(self.out, self.work, "unsigned-loader")
        mtools(d, "mcopy", "-o", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "::/EFI/BOOT/BOOTX64.EFI")
        vm = self.boot("unsigned-loader", d)
        try:
            m = vm.wait_for("Access Denied", "VVGATE-READY", "Linux version", timeout=TIMEOUT / 2)
            assert m == "Access Denied", f"expected the firmware to refuse, saw {m}"
        finally:
            vm.stop()

    def unsigned_kernel_image_is_refused(self):
        d = disk_copy(self.out, self.work, "unsigned-uki")
        version = open(os.path.join(self.out, "version")).read().strip()
        unsigned = os.path.join(self.work, "uki-unsigned.efi")
        shutil.copy(os.path.join(self.out, "uki.efi"), unsigned)
        run("sbattach", "--remove", unsigned)
        mtools(d, "mcopy", "-o", unsigned, f"::/EFI/Linux/vvgate_{version}.efi")
        vm = self.boot("unsigned-uki", d)
        try:
            m = vm.wait_for("Access Denied", "Security Violation", "VVGATE-READY", "Linux version",
                            timeout=TIMEOUT / 2)
            assert m in ("Access Denied", "Security Violation"), f"expected a refusal, saw {m}"
        finally:
            vm.stop()

    def flipped_root_byte_fails_verification(self):
        d = disk_copy(self.out, self.work, "flipped")
        start = partitions(d)[1]["start"] * 512
        with open(d, "r+b") as f:
            f.seek(start + 100)  # inside the squashfs superblock: read on every boot
            b = f.read(1)
            f.seek(start + 100)
            f.write(bytes([b[0] ^ 0x01]))
        vm = self.boot("flipped", d)
        try:
            m = vm.wait_for("VVGATE-READY", "Kernel panic")
            assert m == "Kernel panic", f"expected a panic (panic-on-corruption), saw {m}"
            assert "device-mapper: verity" in vm.text(), "the panic is not dm-verity's"
            print(f"     {vm.line('device-mapper: verity').strip()[:120]}")
        finally:
            vm.stop()

    def update_bundle_installs_into_slot_b_and_boots(self):
        """Apply the second bundle (image/build --version X into <out>/next) to a copy of the
        disk on the host, the way vvctl does on the box, then boot it."""
        nxt = os.path.join(self.out, "next")
        assert os.path.isdir(os.path.join(nxt, "bundle")), f"no {nxt}/bundle (image/build --out {nxt} --keys {self.out}/keys --version ...)"
        d = disk_copy(self.out, self.work, "updated")
        esp = os.path.join(self.work, "esp")
        os.makedirs(esp)
        mtools(d, "mcopy", "-s", "::/EFI", esp)
        before = set(os.listdir(os.path.join(esp, "EFI", "Linux")))
        version = os.path.join(self.work, "version")
        with open(version, "w") as f:
            f.write(open(os.path.join(self.out, "version")).read())
        r = subprocess.run([self.vvctl, "update", "apply", os.path.join(nxt, "bundle"), "--disk", d,
                            "--esp", esp, "--running-roothash", self.roothash,
                            "--key", os.path.join(self.keys, "update.pub"),
                            "--version-file", version], capture_output=True, text=True)
        assert r.returncode == 0, f"update apply: {r.returncode} {r.stdout} {r.stderr}"
        after = set(os.listdir(os.path.join(esp, "EFI", "Linux")))
        for gone in before - after:
            mtools(d, "mdel", f"::/EFI/Linux/{gone}")
        for new in after - before:
            mtools(d, "mcopy", os.path.join(esp, "EFI", "Linux", new), f"::/EFI/Linux/{new}")
        new_hash = open(os.path.join(nxt, "roothash")).read().strip()
        new_version = open(os.path.join(nxt, "version")).read().strip()
        vm = self.boot("updated", d)
        try:
            m = vm.wait_for("VVGATE-READY", "Access Denied", "Kernel panic")
            assert m == "VVGATE-READY", f"the updated disk did not come up (saw {m})"
            ready = vm.line("VVGATE-READY")
            print(f"     {ready.strip()} after {vm.elapsed():.1f} s")
            assert f"version={new_version}" in ready and f"roothash={new_hash}" in ready, \
                "the updated disk booted the old slot"
        finally:
            vm.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap.add_argument("--out", default=os.path.join(repo, "image", "out"))
    ap.add_argument("--vvctl", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target")), "release", "vvctl"))
    ap.add_argument("--keys", help="the Secure Boot and update keys (default: <out>/keys)")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, overlays)")
    args = ap.parse_args()
    c = Checks(args)
    order = ["secure_boot_ready_and_accepts_a_signed_event",
             "kill_on_the_serial_console_survives_a_reboot_and_two_officers_rearm",
             "unsigned_boot_loader_is_refused",
             "unsigned_kernel_image_is_refused", "flipped_root_byte_fails_verification",
             "update_bundle_installs_into_slot_b_and_boots"]
    unknown = [n for n in args.only if n not in order]
    if unknown:
        ap.error(f"unknown check {unknown[0]}; the checks are: {', '.join(order)}")
    t0 = time.monotonic()
    for n in order:
        if args.only and n not in args.only:
            continue
        c.check(n, getattr(c, n))
    print(f"{len(c.failed)} failed, {time.monotonic() - t0:.0f} s in all ({accel()[1]}); logs in {c.work}")
    if not c.failed and not args.keep:
        shutil.rmtree(c.work, ignore_errors=True)
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
