//! Bus messages a device-side bus instance answers itself (reference §4):
//! GET_DEVICES and PING, and the EVENT_DEVICE it originates. Pure logic, so
//! every bus (local, Xen, FF-A partition) answers the same way.

use vmsg_proto::{Body, Codec, EncodeError, Message, Profile, device_bus_state};

/// The set of device numbers present on a bus instance.
pub trait DeviceSet {
    /// Whether device number `dev_num` is present.
    fn contains(&self, dev_num: u16) -> bool;
    /// The smallest present device number `>= from`, if any.
    fn next_at_or_after(&self, from: u32) -> Option<u16>;
}

/// Answer a GET_DEVICES window (§4.1, v2 rules): the response describes
/// `[offset, offset + count)` with `count <=` the requested count, trimmed by
/// the message size and by an empty tail; `next_offset` is the next present
/// device beyond the described slots, or 0 when enumeration is complete.
///
/// For a `count = 0` request the answer is count 0 with an empty bitmap and
/// `next_offset` = the first present device `> offset` (or 0), as the
/// "0 or greater than offset" rule demands (docs/decisions.md).
///
/// On [`Profile::V1`] windows are 8-aligned (v1 §4.1: offset and count
/// multiples of 8, `next_offset` 0 or an aligned value ≥ offset + count):
/// the described count is rounded up to whole groups of 8 and `next_offset`
/// down to the group of the next device.
pub fn get_devices_response<'b>(
    devices: &dyn DeviceSet,
    codec: &Codec,
    offset: u16,
    count: u16,
    bitmap: &'b mut [u8],
) -> Body<'b> {
    let fits = codec.max_devices_bitmap_bits().min(bitmap.len() * 8);
    let window_end = (u32::from(offset) + u32::from(count)).min(1 << 16);
    let size_end = (u32::from(offset) + fits as u32).min(window_end);
    // Trim the empty tail of the window.
    let mut described_end = u32::from(offset);
    let mut dev = devices.next_at_or_after(u32::from(offset));
    while let Some(d) = dev {
        if u32::from(d) >= size_end {
            break;
        }
        described_end = u32::from(d) + 1;
        dev = devices.next_at_or_after(u32::from(d) + 1);
    }
    let v1 = codec.profile() == Profile::V1;
    if v1 {
        let groups = (described_end - u32::from(offset)).next_multiple_of(8);
        described_end = (u32::from(offset) + groups).min(size_end);
    }
    let described = (described_end - u32::from(offset)) as u16;
    let bytes = usize::from(described).div_ceil(8);
    let bitmap = &mut bitmap[..bytes];
    bitmap.iter_mut().for_each(|b| *b = 0);
    for n in 0..described {
        if devices.contains(offset + n) {
            bitmap[usize::from(n / 8)] |= 1 << (n % 8);
        }
    }
    // §4.1: next_offset is 0 (done) or above the request offset. With
    // count 0 and a device exactly at `offset` that means pointing past it;
    // a count-0 request describes nothing, so nothing is lost for a walk.
    let next_offset = devices
        .next_at_or_after(described_end.max(u32::from(offset) + 1))
        .map_or(0, |d| {
            let group = d & !7;
            if v1 && u32::from(group) >= described_end {
                group
            } else {
                d
            }
        });
    Body::Devices {
        offset,
        next_offset,
        count: described,
        bitmap,
    }
}

/// Answer a bus request addressed to the bus instance. Returns the encoded
/// length, or `None` if the message is not one the device side answers
/// (the caller counts and drops it).
pub fn answer_bus_request(
    devices: &dyn DeviceSet,
    codec: &Codec,
    msg: &Message<'_>,
    out: &mut [u8],
) -> Result<Option<usize>, EncodeError> {
    // The bitmap buffer only for GET_DEVICES: zeroing 8 KiB per PING shows
    // up in the round trip.
    let mut bitmap;
    let body = match msg.body {
        // v1 windows are 8-aligned (§4.1): a misaligned one has no valid
        // answer and is dropped as malformed.
        Body::GetDevices { offset, count }
            if codec.profile() == Profile::V1 && (offset % 8 != 0 || count % 8 != 0) =>
        {
            return Ok(None);
        }
        Body::GetDevices { offset, count } => {
            bitmap = [0u8; 8192];
            get_devices_response(devices, codec, offset, count, &mut bitmap)
        }
        Body::Ping { data } => Body::Pong { data },
        _ => return Ok(None),
    };
    codec
        .encode(
            &Message {
                dev_num: 0,
                token: msg.token,
                body,
            },
            out,
        )
        .map(Some)
}

/// Encode the EVENT_DEVICE announcing that `dev_num` was added (`added`) or
/// removed.
pub fn event_device(
    codec: &Codec,
    dev_num: u16,
    added: bool,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    codec.encode(
        &Message {
            dev_num: 0,
            token: 0,
            body: Body::EventDevice {
                device_number: dev_num,
                state: if added {
                    device_bus_state::ADDED
                } else {
                    device_bus_state::REMOVED
                },
            },
        },
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Set(&'static [u16]);

    impl DeviceSet for Set {
        fn contains(&self, dev_num: u16) -> bool {
            self.0.contains(&dev_num)
        }
        fn next_at_or_after(&self, from: u32) -> Option<u16> {
            self.0.iter().copied().find(|&d| u32::from(d) >= from)
        }
    }

    fn window(profile: Profile, devs: &'static [u16], offset: u16, count: u16) -> (u16, u16) {
        let codec = Codec::new(profile, 264).expect("codec");
        let mut bitmap = [0u8; 64];
        match get_devices_response(&Set(devs), &codec, offset, count, &mut bitmap) {
            Body::Devices {
                count, next_offset, ..
            } => (count, next_offset),
            _ => unreachable!("GET_DEVICES answers Devices"),
        }
    }

    #[test]
    fn v2_trims_the_empty_tail() {
        assert_eq!(window(Profile::V2, &[0, 1, 21], 0, 16), (2, 21));
        assert_eq!(window(Profile::V2, &[0, 1, 21], 16, 16), (6, 0));
    }

    #[test]
    fn v1_windows_are_8_aligned() {
        // Whole groups of 8 described, next_offset the next device's group.
        assert_eq!(window(Profile::V1, &[0, 1, 21], 0, 16), (8, 16));
        assert_eq!(window(Profile::V1, &[0, 1, 21], 16, 16), (8, 0));
        // A count-0 window describes nothing; the next device's group is 0
        // here, which reads as "finished" (v1 allows only aligned values).
        assert_eq!(window(Profile::V1, &[3], 0, 0), (0, 0));
        assert_eq!(window(Profile::V1, &[11], 0, 0), (0, 8));
        assert_eq!(window(Profile::V1, &[], 0, 64), (0, 0));
        assert_eq!(window(Profile::V1, &[65535], 0xFFF8, 8), (8, 0));
    }
}
