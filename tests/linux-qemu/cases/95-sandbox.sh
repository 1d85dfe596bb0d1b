# cases: sandbox
# vmsgd confines itself once set up (docs/security.md): every case before
# this one ran with its seccomp filter on; here the kernel says so. Sourced
# by guest-init.sh (before 99-shutdown).

if wanted sandbox; then (
    st=/proc/$vmsgd_pid/status
    seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' $st)
    nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' $st)
    capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' $st)
    capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' $st)
    facts="Seccomp=$seccomp NoNewPrivs=$nnp CapEff=$capeff CapBnd=$capbnd"
    if [ "$seccomp" = 2 ] && [ "$nnp" = 1 ] && [ "$capeff" = 0000000000000000 ] &&
        [ "$capbnd" = 0000000000000000 ]; then
        pass sandbox "filter on, no privileges: $facts"
    else
        fail sandbox "$facts; vmsgd log: $(grep sandbox /share/vmsgd.log | tail -1)"
    fi
); fi
