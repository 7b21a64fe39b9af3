#!/usr/bin/env python3
"""Boot the built vvgate image in qemu with OVMF and Secure Boot enforced, and check it.

    hw-tests/image/boot-test.py [--out image/out] [--only NAME ...]

Needs what image/build made in --out: disk.raw, bundle/, keys/ (PK, KEK, db certificates),
producer/ (the dev configuration's producer credentials), roothash; and vvctl (--vvctl, default
target/release/vvctl). Host packages: qemu-system-x86 qemu-utils ovmf mtools fdisk sbsigntool, and virt-firmware
(pip) to enroll the dev keys into a copy of the OVMF variable store.

Each check boots its own copy-on-write overlay of the disk and prints PASS/FAIL with the seconds
it took. KVM is used only when /dev/kvm works and the CPU offers vmx or svm; otherwise TCG,
with marker timeouts of several minutes.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


class Vm:
    """One qemu run on an overlay of a disk; the console (ttyS0) goes to a log file."""

    def __init__(self, work, name, disk, vars_fd):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.overlay = os.path.join(self.dir, "overlay.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", os.path.abspath(disk), self.overlay)
        self.vars = os.path.join(self.dir, "vars.fd")
        shutil.copy(vars_fd, self.vars)
        self.log = os.path.join(self.dir, "console.log")
        self.port = free_port()
        self.proc = None

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
               "-device", "virtio-rng-pci"]
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


def partitions(disk):
    return json.loads(run("sfdisk", "-J", disk))["partitiontable"]["partitions"]


def esp_offset(disk):
    return partitions(disk)[0]["start"] * 512


def enrolled_vars(out, work):
    """A copy of the OVMF variable store with the dev PK, KEK and db enrolled, Secure Boot on."""
    keys = os.path.join(out, "keys")
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
        self.work = tempfile.mkdtemp(prefix="vvgate-boot-")
        self.vars = enrolled_vars(self.out, self.work)
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
                            "--key", os.path.join(self.out, "keys", "update.pub"),
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
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, overlays)")
    args = ap.parse_args()
    c = Checks(args)
    names = [n for n in dir(Checks) if not n.startswith("_") and n not in ("boot", "send", "check")]
    names = [n for n in names if callable(getattr(Checks, n))]
    order = ["secure_boot_ready_and_accepts_a_signed_event", "unsigned_boot_loader_is_refused",
             "unsigned_kernel_image_is_refused", "flipped_root_byte_fails_verification",
             "update_bundle_installs_into_slot_b_and_boots"]
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
