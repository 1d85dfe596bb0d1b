# Host side of cases/30-i2c.sh, sourced by run.sh: phase=prepare gives the
# built-in i2c-stub its chips on the kernel command line; phase=check reads
# the simulated EEPROM's backing file the guest's at24 driver wrote through
# vmsgd.
case $phase in
prepare)
    extra_append="$extra_append i2c_stub.chip_addr=0x1c,0x50,0x51"
    ;;
check)
    if passed i2c-at24; then
        if out=$(hc pattern check "$share/eeprom.bin" 0 256 $((seed + 9))); then
            host image-eeprom PASS "eeprom.bin holds the pattern at24 wrote through virtio-i2c: $out"
        else host image-eeprom FAIL "eeprom.bin: $out"; fi
    fi
    ;;
esac
