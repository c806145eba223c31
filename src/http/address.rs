//! Which addresses a sink URI may name: cloud metadata addresses are refused unless
//! `delivery.allowAddresses` lists them, in every notation the system resolver reads as
//! an address. Config validation checks literals with these; the delivery connector
//! checks the address a connection actually reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The instance metadata services of the big clouds: AWS, GCP, Azure, OpenStack and
/// others (169.254.169.254), AWS ECS task metadata (169.254.170.2), AWS over IPv6
/// (fd00:ec2::254) and Alibaba Cloud (100.100.100.200).
pub const METADATA_ADDRESSES: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Whether `ip` is a metadata address that `allowed` does not exempt.
pub fn is_refused_metadata(ip: IpAddr, allowed: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    METADATA_ADDRESSES.contains(&ip) && !allowed.contains(&ip)
}

/// The address a URI host names literally, in any notation the system resolver takes
/// as an address rather than a name: `[v6]`, or IPv4 in the `inet_aton(3)` forms (see
/// [`parse_inet_aton`]). `None` for a host name.
pub fn host_address(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => parse_inet_aton(host).map(IpAddr::V4),
    }
}

/// An IPv4 address in the notations of `inet_aton(3)`, which glibc's `getaddrinfo`
/// (the resolver hyper's connector uses) accepts too: one to four parts separated by
/// dots, each decimal, octal (a leading `0`) or hexadecimal (`0x`); the last part fills
/// the bytes the others leave. So `2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`
/// and `169.254.43518` are all 169.254.169.254. `None` for anything else, e.g. a
/// trailing dot, an empty part, `8` or `9` in an octal part, or a part too large for
/// the bytes it fills.
pub fn parse_inet_aton(host: &str) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 4];
    let mut count = 0;
    for text in host.split('.') {
        *parts.get_mut(count)? = inet_aton_part(text)?;
        count += 1;
    }
    let (last, leading) = parts[..count].split_last()?;
    // The leading parts are one byte each; the last fills the remaining 4 - (count - 1).
    let last_bits = 32 - 8 * leading.len() as u32;
    if leading.iter().any(|&p| p > 0xff) || u64::from(*last) >= 1u64 << last_bits {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &p)| acc | p << (24 - 8 * i as u32));
    Some(Ipv4Addr::from(high | last))
}

/// One part of an `inet_aton` address.
fn inet_aton_part(text: &str) -> Option<u32> {
    let (digits, radix) = match text.as_bytes() {
        [b'0', b'x' | b'X', ..] => (&text[2..], 16),
        [b'0', _, ..] => (&text[1..], 8),
        _ => (text, 10),
    };
    // Empty (glibc refuses a bare `0x` too), or what from_str_radix would also take
    // (a leading '+').
    if digits.is_empty() || !digits.bytes().all(|b| char::from(b).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_reads_every_ipv4_notation_the_resolver_does() {
        let metadata = Some(Ipv4Addr::new(169, 254, 169, 254));
        let table: &[(&str, Option<Ipv4Addr>)] = &[
            ("169.254.169.254", metadata),
            ("2852039166", metadata),
            ("0xa9fea9fe", metadata),
            ("0XA9FEA9FE", metadata),
            ("0251.0376.0251.0376", metadata),
            ("169.254.43518", metadata),
            ("169.16689662", metadata),
            ("0xa9.0xfe.0xa9.0xfe", metadata),
            ("0251.254.0xa9.254", metadata),
            ("00000000251.254.169.254", metadata),
            ("0", Some(Ipv4Addr::UNSPECIFIED)),
            ("0x", None),
            ("0x.0x.0x.0x", None),
            ("127.1", Some(Ipv4Addr::LOCALHOST)),
            ("4294967295", Some(Ipv4Addr::BROADCAST)),
            ("10.0.0.1", Some(Ipv4Addr::new(10, 0, 0, 1))),
            ("010.0.0.1", Some(Ipv4Addr::new(8, 0, 0, 1))),
            ("4294967296", None),
            ("256.1.1.1", None),
            ("1.1.1.256", None),
            ("1.1.65536", None),
            ("1.16777216", None),
            ("1.16777215", Some(Ipv4Addr::new(1, 255, 255, 255))),
            ("1.2.3.4.5", None),
            ("169.254.169.254.", None),
            (".1.2.3", None),
            ("1..2", None),
            ("", None),
            ("08", None),
            ("0x1g", None),
            ("+1", None),
            ("1.+2", None),
            ("-1", None),
            ("metadata.google.internal", None),
            ("a9fea9fe", None),
        ];
        for (host, want) in table {
            assert_eq!(parse_inet_aton(host), *want, "{host:?}");
        }
        assert_eq!(
            host_address("[fd00:ec2::254]"),
            Some(METADATA_ADDRESSES[2]),
            "IPv6 in brackets"
        );
        assert_eq!(
            host_address("fd00:ec2::254"),
            None,
            "IPv6 without brackets is no host"
        );
        assert_eq!(host_address("[169.254.169.254]"), None);
    }
}
