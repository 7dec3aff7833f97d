#!/bin/sh
# Stage 2 of a matrix VM's init: PID 1, run by the host's own /bin/sh on the
# overlay of the host's root (see init). It mounts what the test suites
# need, then follows /zh-guest/plan, which xtask wrote, one line each:
#
#   modules DIR          bind DIR (this kernel's modules, on the host's file
#                        system) to /lib/modules/$(uname -r), for modprobe
#   env NAME=VALUE       export to what follows
#   probe ZEROHOP        run `ZEROHOP probe -o json` (features, verifier numbers)
#   suite NAME CMD...    run a test suite
#
# and tells xtask what happened on the second serial port, one line each:
# "booted RELEASE", "suite NAME EXIT SECONDS", "report JSON", "done". Then
# it reboots, which ends qemu. Output goes to the console (first port).

set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
hostname zh-vm
# The kernel makes its socket hash secrets on first use (DO_ONCE), then
# patches that code out of its own text (a static key, an int3 at the site
# while it writes). A 7.2 guest under emulation once oopsed on that int3
# ("Oops: int3", RIP udp_ehashfn) when a test's UDP connect ran into the
# patching. Take the first TCP and UDP hashes of both families here, while
# nothing else runs; the ports are closed, nothing is sent anywhere else.
bash -c 'for ip in 127.0.0.1 ::1; do
    exec 3<>"/dev/udp/$ip/9"; exec 3>&-
    (exec 4<>"/dev/tcp/$ip/9") 2>/dev/null
done' || true
stty -F /dev/ttyS1 115200 raw -echo

report() {
    printf '%s\n' "$*" > /dev/ttyS1
}

# No suite may take longer, so that a hung one is named, not the whole VM.
SUITE_TIMEOUT=1200

report "booted $(uname -r)"
while read -r kind first rest; do
    case $kind in
        modules)
            mkdir -p "/lib/modules/$(uname -r)"
            mount --bind "$first" "/lib/modules/$(uname -r)"
            ;;
        env)
            export "$first"
            ;;
        probe)
            report "report $("$first" probe -o json < /dev/null | tr -d '\n')"
            ;;
        suite)
            echo "== suite $first on $(uname -r)"
            started=$(date +%s)
            # shellcheck disable=SC2086 # the plan's words are the arguments
            timeout "$SUITE_TIMEOUT" $rest < /dev/null
            code=$?
            report "suite $first $code $(($(date +%s) - started))"
            ;;
    esac
done < /zh-guest/plan
report done
echo b > /proc/sysrq-trigger
