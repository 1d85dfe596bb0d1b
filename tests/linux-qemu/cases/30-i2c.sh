# cases: i2c-stub i2c-allow i2c-unsupported i2c-lm75 i2c-eeprom i2c-at24 i2c-rdwr
# virtio-i2c: the kernel's i2c-virtio driver on vmsgd's dev 5 (the kernel's
# own i2c-stub passed through: chips 0x1c 0x50 0x51, allow = 0x1c 0x1d
# 0x50) and dev 6 (simulated 24c02 at 0x50 on /share/eeprom.bin, lm75 at
# 0x48 reading 23.5 °C), through i2c-dev and busybox's i2c tools, and at24.
# i2c-rdwr adds dev 7 by SIGHUP: the virtio adapter of dev 6 passed through
# as an I2C-capable host adapter (I2C_RDWR). Sourced by guest-init.sh.

# Adapters by name: the stub (the host adapter vmsgd passes through) and the
# two virtio ones, in registration (= dev_num) order.
adapters=$(for d in /sys/bus/i2c/devices/i2c-*; do echo "${d##*/i2c-} $(cat "$d/name")"; done)
stub=$(echo "$adapters" | sed -n 's/^\([0-9]*\) SMBus stub driver$/\1/p')
virtio=$(echo "$adapters" | sed -n 's/^\([0-9]*\) i2c_virtio at virtio bus \([0-9]*\)$/\2 \1/p' | sort -n | cut -d' ' -f2)
pass_bus=$(echo "$virtio" | sed -n 1p)
sim_bus=$(echo "$virtio" | sed -n 2p)
echo "guest: i2c adapters: stub=i2c-$stub passthrough=i2c-$pass_bus simulated=i2c-$sim_bus"
# Expect a value, or fail the case with what came instead.
expect() {
    _case=$1 _want=$2
    shift 2
    _got=$("$@" 2>&1)
    if [ "$_got" != "$_want" ]; then
        fail "$_case" "$* -> '$_got' (want '$_want')"
        return 1
    fi
}
# A command that must fail. busybox's i2ctransfer exits 0 when the kernel
# reports fewer messages done than asked ("only 0/1 messages sent"): that
# is a failure too.
refused() {
    _case=$1
    shift
    if _got=$("$@" 2>&1) && ! echo "$_got" | grep -q 'messages sent'; then
        fail "$_case" "$* succeeded ('$_got'); it must fail"
        return 1
    fi
}

if [ -z "$stub" ] || [ -z "$pass_bus" ] || [ -z "$sim_bus" ]; then
    for c in i2c-stub i2c-allow i2c-unsupported i2c-lm75 i2c-eeprom i2c-at24 i2c-rdwr; do
        wanted $c && fail $c "adapters missing: $(echo "$adapters" | tr '\n' ';')"
    done
else

if wanted i2c-stub; then (
    # Guest SMBus calls on the virtio adapter become I2C messages
    # (i2c_smbus_xfer_emulated); vmsgd maps them back onto SMBus commands
    # of the stub, an SMBus-only adapter (I2C_FUNCS has no I2C_FUNC_I2C).
    i2cset -y $stub 0x1c 0x10 0x5a b
    expect i2c-stub 0x5a i2cget -y $pass_bus 0x1c 0x10 b || exit
    i2cset -y $pass_bus 0x1c 0x20 0xa5 b || { fail i2c-stub "byte write through virtio"; exit; }
    expect i2c-stub 0xa5 i2cget -y $stub 0x1c 0x20 b || exit
    i2cset -y $pass_bus 0x50 0x30 0x1234 w || { fail i2c-stub "word write through virtio"; exit; }
    expect i2c-stub 0x1234 i2cget -y $stub 0x50 0x30 w || exit
    expect i2c-stub 0x1234 i2cget -y $pass_bus 0x50 0x30 w || exit
    # A combined write-then-read of 8 bytes: an I2C block read on the stub.
    i2cset -y $stub 0x50 0x40 0x11 0x22 0x33 0x44 0x55 0x66 0x77 0x88 i
    expect i2c-stub "0x11 0x22 0x33 0x44 0x55 0x66 0x77 0x88" i2ctransfer -y $pass_bus w1@0x50 0x40 r8 || exit
    # A 5-byte write: an I2C block write of 4 at register 0x60.
    i2ctransfer -y $pass_bus w5@0x1c 0x60 1 2 3 4 || { fail i2c-stub "block write through virtio"; exit; }
    got=$(for r in 0x60 0x61 0x62 0x63; do i2cget -y $stub 0x1c $r b; done | tr '\n' ' ')
    [ "$got" = "0x01 0x02 0x03 0x04 " ] || { fail i2c-stub "stub registers 0x60.. read '$got' after the block write"; exit; }
    pass i2c-stub "i2c-$pass_bus -> i2c-stub (SMBus only): byte/word read+write, 8-byte write-then-read, 4-byte block write reach the stub's registers"
); fi

if wanted i2c-allow; then (
    # 0x51 is a chip on the host adapter but not on this guest's list: the
    # guest cannot see, read or write it, and nothing reaches the stub.
    i2cset -y $stub 0x51 0x00 0x42 b
    refused i2c-allow i2cset -y $pass_bus 0x51 0x00 0x99 b || exit
    refused i2c-allow i2cget -y $pass_bus 0x51 0x00 b || exit
    expect i2c-allow 0x42 i2cget -y $stub 0x51 0x00 b || exit
    # 0x1d is allowed but no chip answers: the stub's own NACK.
    refused i2c-allow i2cget -y $pass_bus 0x1d 0x00 b || exit
    # A scan (SMBus quick) sees exactly the allowed chips.
    seen=$(i2cdetect -y -q $pass_bus 2>&1 | sed -n 's/^[0-7]0: //p' | tr ' ' '\n' | grep -v -e '^--$' -e '^$' | tr '\n' ' ')
    [ "$seen" = "1c 50 " ] || { fail i2c-allow "i2cdetect on i2c-$pass_bus sees '$seen' (want '1c 50 ')"; exit; }
    pass i2c-allow "0x51 (a stub chip off the allow-list) refused for read and write and left unchanged (0x42); 0x1d NACKs; i2cdetect sees: $seen"
); fi

if wanted i2c-unsupported; then (
    # A 4-byte read without a register byte has no SMBus command: it fails
    # cleanly and the device carries on.
    refused i2c-unsupported i2ctransfer -y $pass_bus r4@0x50 || exit
    expect i2c-unsupported 0x1234 i2cget -y $pass_bus 0x50 0x30 w || exit
    out=$(run_or_fail i2c-unsupported $check wait-log /share/vmsgd.log "no SMBus command carries" 5000) || exit
    pass i2c-unsupported "r4@0x50 refused (no SMBus command carries it, logged: $out); the device still serves"
); fi

if wanted i2c-lm75; then (
    # SMBus words are little-endian on the wire, the LM75 sends MSB first.
    expect i2c-lm75 0x8017 i2cget -y $sim_bus 0x48 0x00 w || exit
    expect i2c-lm75 "0x17 0x80" i2ctransfer -y $sim_bus w1@0x48 0x00 r2 || exit
    refused i2c-lm75 i2cget -y $sim_bus 0x33 0x00 b || exit
    pass i2c-lm75 "lm75 at 0x48 reads 0x1780 (23.5 °C); absent 0x33 NACKs"
); fi

if wanted i2c-eeprom; then (
    # A page write across the end of its 8-byte page wraps to its start.
    i2ctransfer -y $sim_bus w9@0x50 0x16 1 2 3 4 5 6 7 8 || { fail i2c-eeprom "page write"; exit; }
    expect i2c-eeprom "0x03 0x04 0x05 0x06 0x07 0x08 0x01 0x02" i2ctransfer -y $sim_bus w1@0x50 0x10 r8@0x50 || exit
    pass i2c-eeprom "8 bytes written at 0x16 landed at 0x16 0x17 0x10..0x15 (24c02 page wrap)"
); fi

if wanted i2c-at24; then (
    # The kernel's own EEPROM driver on the simulated chip.
    echo 24c02 0x50 >/sys/bus/i2c/devices/i2c-$sim_bus/new_device
    node=/sys/bus/i2c/devices/$sim_bus-0050/eeprom
    # at24 probes synchronously: the node is there once the write returns.
    [ -e $node ] || { fail i2c-at24 "no $node after new_device; dmesg: $(dmesg | grep -i at24 | tail -2)"; exit; }
    run_or_fail i2c-at24 $check pattern write $node 0 256 $((seed + 9)) >/dev/null || exit
    out=$(run_or_fail i2c-at24 $check pattern check $node 0 256 $((seed + 9))) || exit
    pass i2c-at24 "at24 bound to the simulated 24c02 ($node): 256 bytes written, read back: $out"
); fi

if wanted i2c-rdwr; then (
    # An I2C-capable host adapter: the kernel's virtio adapter of dev 6,
    # added as dev 7 once it exists. dev 7's worker thread blocks in
    # I2C_RDWR while vmsgd's guest thread serves dev 6 underneath it. The
    # device stays configured (removing it is refused on this kernel).
    cat >>/tmp/vmsgd.toml <<EOT

[[guest.device]]
kind = "i2c"
dev_num = 7
adapter = $sim_bus
allow = [0x48, 0x50, 0x51]
EOT
    kill -HUP $vmsgd_pid
    out=$(run_or_fail i2c-rdwr $check wait-log /share/vmsgd.log "loopback device 7 added" 30000) || exit
    rdwr_bus=$(for d in /sys/bus/i2c/devices/i2c-*; do echo "${d##*/i2c-} $(cat "$d/name")"; done \
        | sed -n 's/^\([0-9]*\) i2c_virtio at virtio bus \([0-9]*\)$/\2 \1/p' | sort -n | cut -d' ' -f2 | sed -n 3p)
    [ -n "$rdwr_bus" ] || { fail i2c-rdwr "no third virtio adapter after adding dev 7"; exit; }
    expect i2c-rdwr "0x17 0x80" i2ctransfer -y $rdwr_bus w1@0x48 0x00 r2 || exit
    # Four messages, two targets: one I2C_RDWR, one transaction on dev 6.
    # -f: at24 owns 0x50 on that adapter now (I2C_RDWR itself does not care).
    direct=$(i2ctransfer -f -y $sim_bus w1@0x50 0x20 r4 2>&1)
    got=$(i2ctransfer -y $rdwr_bus w1@0x48 0x00 r2@0x48 w1@0x50 0x20 r4@0x50 2>&1 | tr '\n' ' ')
    [ "$got" = "0x17 0x80 $direct " ] || { fail i2c-rdwr "4-message transfer read '$got' (want '0x17 0x80 $direct ')"; exit; }
    # Allowed but absent on dev 6: the NACK comes back through both levels.
    refused i2c-rdwr i2ctransfer -y $rdwr_bus r1@0x51 || exit
    refused i2c-rdwr i2ctransfer -y $rdwr_bus r1@0x33 || exit
    pass i2c-rdwr "dev 7 on i2c-$sim_bus (I2C_RDWR) as i2c-$rdwr_bus ($out): lm75 read, a 4-message 2-target transfer, NACK of 0x51 through both levels, 0x33 refused"
); fi

fi
