//! Data-connection address syntax: the `h1,h2,h3,h4,p1,p2` form of `PORT`
//! and the 227 reply to `PASV` (RFC 959 §4.1.2, §4.2.2), and the delimited
//! forms of `EPRT` and the 229 reply to `EPSV` (RFC 2428 §2 and §3).
//!
//! Parsing lives here next to formatting so the two can be round-trip
//! tested; [`crate::proto::command`] calls the parsers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use super::error::ParseError;

/// `127,0,0,11,195,80`: the host-port argument of PORT and of the 227
/// reply (the caller adds the parentheses the reply text uses).
pub fn format_pasv(addr: SocketAddrV4) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let [hi, lo] = addr.port().to_be_bytes();
    format!("{a},{b},{c},{d},{hi},{lo}")
}

/// `(|||50000|)`: the 229 reply text of RFC 2428 §3, which names only the
/// port; the client reuses the control connection's address.
pub fn format_epsv(port: u16) -> String {
    format!("(|||{port}|)")
}

/// `|1|127.0.0.1|5282|` or `|2|::1|5282|`: the EPRT argument of RFC 2428 §2.
pub fn format_eprt(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("|1|{}|{}|", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("|2|{}|{}|", a.ip(), a.port()),
    }
}

/// Parse the PORT argument `h1,h2,h3,h4,p1,p2`: exactly six decimal numbers
/// 0-255, spaces around each tolerated (some clients send them).
pub fn parse_port(s: &str) -> Option<SocketAddrV4> {
    let mut nums = [0u8; 6];
    let mut fields = s.split(',');
    for slot in nums.iter_mut() {
        *slot = parse_decimal::<u8>(fields.next()?.trim())?;
    }
    if fields.next().is_some() {
        return None;
    }
    let [a, b, c, d, hi, lo] = nums;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(a, b, c, d),
        u16::from_be_bytes([hi, lo]),
    ))
}

/// Parse the EPRT argument `<d><proto><d><addr><d><port><d>` (RFC 2428 §2).
/// The delimiter is the first character (ASCII 33-126). An unknown protocol
/// number gets [`ParseError::UnsupportedProtocol`] so the caller can answer
/// 522 with the supported list; anything else malformed is `BadArgument`.
pub fn parse_eprt(s: &str) -> Result<SocketAddr, ParseError> {
    let bad = |reason: &str| ParseError::BadArgument {
        verb: "EPRT",
        reason: reason.to_string(),
    };
    let s = s.trim();
    let delim = s.chars().next().ok_or_else(|| bad("missing argument"))?;
    if !matches!(delim, '!'..='~') {
        return Err(bad("invalid delimiter"));
    }
    let fields: Vec<&str> = s.split(delim).collect();
    let ["", proto, host, port, ""] = fields.as_slice() else {
        return Err(bad("expected <d>proto<d>address<d>port<d>"));
    };
    let proto = parse_decimal::<u32>(proto).ok_or_else(|| bad("invalid network protocol"))?;
    let ip = match proto {
        1 => host
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| bad("invalid IPv4 address"))?,
        2 => host
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| bad("invalid IPv6 address"))?,
        _ => return Err(ParseError::UnsupportedProtocol),
    };
    let port = parse_decimal::<u16>(port).ok_or_else(|| bad("invalid port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Plain decimal digits only: `str::parse` would also accept a leading '+'.
pub(crate) fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(e: Result<SocketAddr, ParseError>) -> bool {
        matches!(e, Err(ParseError::BadArgument { verb: "EPRT", .. }))
    }

    #[test]
    fn pasv_format() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 50000);
        assert_eq!(format_pasv(a), "127,0,0,11,195,80");
        let z = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); // bind-ok: an encoding test value, nothing binds it
        assert_eq!(format_pasv(z), "0,0,0,0,0,0");
    }

    #[test]
    fn pasv_port_round_trip() {
        for (ip, port) in [
            ([127, 0, 0, 11], 50000),
            ([10, 1, 2, 3], 21),
            ([255, 255, 255, 255], 65535),
            ([0, 0, 0, 0], 256),
        ] {
            let a = SocketAddrV4::new(Ipv4Addr::from(ip), port);
            assert_eq!(parse_port(&format_pasv(a)), Some(a));
        }
    }

    #[test]
    fn port_parsing() {
        let want = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5 * 256 + 6);
        assert_eq!(parse_port("1,2,3,4,5,6"), Some(want));
        assert_eq!(parse_port(" 1, 2 ,3 , 4,5 , 6 "), Some(want));
        for bad in [
            "",
            "1,2,3,4,5",
            "1,2,3,4,5,6,7",
            "1,2,3,4,5,256",
            "1,2,3,4,5,99999999999999999999999",
            "1,2,3,4,5,-1",
            "1,2,3,4,5,+6",
            "1,2,3,4,,6",
            "a,b,c,d,e,f",
            "1.2.3.4.5.6",
            "1,2,3,4,5,6,",
            "1,2,3,4,5,0x6",
        ] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn epsv_format() {
        assert_eq!(format_epsv(50000), "(|||50000|)");
    }

    #[test]
    fn eprt_format_and_round_trip() {
        let v4: SocketAddr = "127.0.0.1:5282".parse().expect("addr");
        let v6: SocketAddr = "[::1]:5282".parse().expect("addr");
        assert_eq!(format_eprt(v4), "|1|127.0.0.1|5282|");
        assert_eq!(format_eprt(v6), "|2|::1|5282|");
        for a in [
            v4,
            v6,
            "[2001:db8::42]:1".parse().expect("addr"),
            "0.0.0.0:65535".parse().expect("addr"), // bind-ok: an encoding test value
        ] {
            assert_eq!(parse_eprt(&format_eprt(a)), Ok(a));
        }
    }

    #[test]
    fn eprt_other_delimiters() {
        let want: SocketAddr = "132.235.1.2:6275".parse().expect("addr");
        assert_eq!(parse_eprt("|1|132.235.1.2|6275|"), Ok(want));
        assert_eq!(parse_eprt("!1!132.235.1.2!6275!"), Ok(want));
        assert_eq!(parse_eprt(" |1|132.235.1.2|6275| "), Ok(want));
        let v6: SocketAddr = "[1080::8:800:200c:417a]:5282".parse().expect("addr");
        assert_eq!(parse_eprt("#2#1080::8:800:200C:417A#5282#"), Ok(v6));
    }

    #[test]
    fn eprt_errors() {
        assert_eq!(
            parse_eprt("|3|1.2.3.4|5|"),
            Err(ParseError::UnsupportedProtocol)
        );
        assert_eq!(parse_eprt("|99|x|5|"), Err(ParseError::UnsupportedProtocol));
        for s in [
            "",
            "   ",
            "|1|1.2.3.4|5",
            "1.2.3.4|5|",
            "|1|1.2.3.4|5|6|",
            "|1|::1|5|",
            "|2|1.2.3.4|5|",
            "|1|1.2.3.4|65536|",
            "|1|1.2.3.4||",
            "|1|1.2.3.4|+5|",
            "||1.2.3.4|5|",
            "|x|1.2.3.4|5|",
            "|99999999999999999999|1.2.3.4|5|",
            "\u{e9}1\u{e9}1.2.3.4\u{e9}5\u{e9}",
            "|2|fe80::1%eth0|5|",
        ] {
            assert!(bad(parse_eprt(s)), "{s:?}");
        }
    }
}
