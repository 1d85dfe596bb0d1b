//! The partition's dispatch (`vmsg_ffa::partition`) under the simulated
//! SPMC's run-to-completion rules (FF-A v1.2 §§ direct messaging): what the
//! secure partition does with each message it is handed.

use arm_ffa::{Interface, Uuid};
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::rng::{EntropyError, EntropySource, RngDevice};
use vmsg_ffa::bus::{DIRECT_PAYLOAD, FfaBus};
use vmsg_ffa::fake::{FakeSpmc, NsMemory, SimDirect};
use vmsg_ffa::msg::FfaProfile;
use vmsg_ffa::partition::{DEVICE_UUID, MSG_WAIT, PartitionCounters, answer};
use vmsg_ffa::spmc::SpmcError;

const SP: u16 = 0x8001;

struct Zeroes;

impl EntropySource for Zeroes {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        buf.fill(0x42);
        Ok(())
    }
}

fn bus() -> FfaBus<FakeSpmc> {
    let (spmc, _driver) = FakeSpmc::new(NsMemory::new(0x4000_0000, 1 << 16), SP, false);
    let devices: Vec<(u16, Box<dyn CoreDevice>)> = vec![(0, Box::new(RngDevice::new(Zeroes)))];
    FfaBus::new(FfaProfile::V2, spmc, devices)
}

fn probe() -> [u8; DIRECT_PAYLOAD] {
    // v2 VERSION probe: bus request 0x80, token 2, msg_size 20.
    let mut f = [0u8; DIRECT_PAYLOAD];
    f[..8].copy_from_slice(&[0x02, 0x80, 0, 0, 2, 0, 20, 0]);
    f[16..20].copy_from_slice(&0x10002u32.to_le_bytes());
    f
}

#[test]
fn requests_reach_only_waiting_contexts_and_get_their_own_response() {
    let mut bus = bus();
    let mut counters = PartitionCounters::default();
    let mut sim = SimDirect::new(SP, 2);
    let mut step = |m: &Interface| {
        answer(m, &mut counters, &mut |s, f, o| {
            bus.handle_direct(s, f, o);
        })
    };
    // Before the partition's first MSG_WAIT its context is busy.
    assert_eq!(
        sim.direct_req2(0, 1, DEVICE_UUID, &probe(), &mut step),
        Err(SpmcError::Busy)
    );
    sim.partition_ready(0, &MSG_WAIT).expect("ready");
    let r = sim
        .direct_req2(0, 1, DEVICE_UUID, &probe(), &mut step)
        .expect("answered");
    assert_eq!(&r[..2], &[0x03, 0x80], "VERSION response");
    // Core 1's context never initialised: busy.
    assert_eq!(
        sim.direct_req2(1, 1, DEVICE_UUID, &probe(), &mut step),
        Err(SpmcError::Busy)
    );
    // A secure-world sender is refused by the SPMC.
    assert_eq!(
        sim.direct_req2(0, 0x8002, DEVICE_UUID, &probe(), &mut step),
        Err(SpmcError::InvalidParameters)
    );
    // An SPMC fault before the partition sees the request.
    sim.fail_next(SpmcError::Busy);
    assert_eq!(
        sim.direct_req2(0, 1, DEVICE_UUID, &probe(), &mut step),
        Err(SpmcError::Busy)
    );
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
}

#[test]
fn the_nil_uuid_echoes_and_an_unknown_service_gets_zeros() {
    let mut bus = bus();
    let mut counters = PartitionCounters::default();
    let mut sim = SimDirect::new(SP, 1);
    sim.partition_ready(0, &MSG_WAIT).expect("ready");
    let frame = [0x5au8; DIRECT_PAYLOAD];
    {
        let mut step = |m: &Interface| {
            answer(m, &mut counters, &mut |s, f, o| {
                bus.handle_direct(s, f, o);
            })
        };
        let echo = sim
            .direct_req2(0, 1, Uuid::nil(), &frame, &mut step)
            .expect("echo");
        assert_eq!(echo, frame);
        let other = Uuid::from_bytes([7; 16]);
        let zeros = sim
            .direct_req2(0, 1, other, &frame, &mut step)
            .expect("answered");
        assert_eq!(zeros, [0; DIRECT_PAYLOAD]);
    }
    assert_eq!(counters.echoes, 1);
    assert_eq!(counters.unknown_service, 1);
    assert_eq!(counters.frames, 0, "neither reached the bus");
    assert_eq!(bus.counters().frames, 0);
}

#[test]
fn a_partition_that_answers_with_anything_but_its_response_is_caught() {
    let mut sim = SimDirect::new(SP, 1);
    // Its init must end in MSG_WAIT.
    assert_eq!(
        sim.partition_ready(0, &Interface::IdGet),
        Err(SpmcError::Denied)
    );
    sim.partition_ready(0, &MSG_WAIT).expect("ready");
    // A partition that waits again instead of responding leaves the caller
    // without an answer: the SPMC refuses the call.
    let mut wrong = |_: &Interface| MSG_WAIT;
    assert_eq!(
        sim.direct_req2(0, 1, DEVICE_UUID, &probe(), &mut wrong),
        Err(SpmcError::Denied)
    );
    assert_eq!(sim.violations.len(), 2);
    // The dispatcher itself answers a v1.0 direct request with its response
    // and anything else by waiting.
    let mut counters = PartitionCounters::default();
    let req = Interface::MsgSendDirectReq {
        src_id: 1,
        dst_id: SP,
        args: arm_ffa::interface_args::DirectMsgArgs::Args64([0; 15]),
    };
    let mut nobus = |_: u16, _: &[u8], _: &mut [u8]| panic!("no frame expected");
    assert!(matches!(
        answer(&req, &mut counters, &mut nobus),
        Interface::MsgSendDirectResp {
            src_id: SP,
            dst_id: 1,
            ..
        }
    ));
    assert!(matches!(
        answer(&Interface::IdGet, &mut counters, &mut nobus),
        Interface::MsgWait { .. }
    ));
    assert_eq!(counters.unexpected, 2);
}
