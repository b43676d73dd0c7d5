//! Local endpoints: the pods attached to this node's ports.

use std::net::Ipv4Addr;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::buf::PortId;
use crate::wire::MacAddr;

/// What owns an endpoint (for operators and metrics labels; not on the fast path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub container_id: Arc<str>,
}

/// A local pod as the fast path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub port: PortId,
    pub owner: Owner,
}

/// Index of an endpoint within one [`EndpointTable`] snapshot.
pub type EndpointIdx = u32;

/// Endpoints by IPv4 and by port. Immutable; rebuilt by the control plane.
#[derive(Debug, Clone, Default)]
pub struct EndpointTable {
    eps: Vec<Endpoint>,
    by_ip: HashMap<u32, EndpointIdx>,
    by_port: Vec<EndpointIdx>,
}

/// Two endpoints claim the same address or port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("IPv4 {0} is held by two endpoints")]
    DuplicateIp(Ipv4Addr),
    #[error("port {0} is held by two endpoints")]
    DuplicatePort(PortId),
}

impl EndpointTable {
    pub fn new(eps: impl IntoIterator<Item = Endpoint>) -> Result<EndpointTable, EndpointError> {
        let eps: Vec<Endpoint> = eps.into_iter().collect();
        let mut by_ip = HashMap::with_capacity(eps.len());
        let max_port = eps.iter().map(|e| e.port.index()).max().unwrap_or(0);
        let mut by_port = vec![u32::MAX; max_port + 1];
        for (i, e) in eps.iter().enumerate() {
            if by_ip.insert(u32::from(e.ip), i as u32).is_some() {
                return Err(EndpointError::DuplicateIp(e.ip));
            }
            let slot = &mut by_port[e.port.index()];
            if *slot != u32::MAX {
                return Err(EndpointError::DuplicatePort(e.port));
            }
            *slot = i as u32;
        }
        Ok(EndpointTable {
            eps,
            by_ip,
            by_port,
        })
    }

    /// The endpoint holding a (host-order) address.
    #[inline(always)]
    pub fn by_ip(&self, ip: u32) -> Option<EndpointIdx> {
        self.by_ip.get(&ip).copied()
    }

    /// The endpoint attached to a port.
    #[inline(always)]
    pub fn by_port(&self, port: PortId) -> Option<EndpointIdx> {
        match self.by_port.get(port.index()) {
            Some(&i) if i != u32::MAX => Some(i),
            _ => None,
        }
    }

    #[inline(always)]
    pub fn get(&self, idx: EndpointIdx) -> &Endpoint {
        &self.eps[idx as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.eps.iter()
    }

    pub fn len(&self) -> usize {
        self.eps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.eps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            mac: MacAddr([2, 0, ip[0], ip[1], ip[2], ip[3]]),
            port: PortId(port),
            owner: Owner::default(),
        }
    }

    #[test]
    fn lookups_and_duplicates() {
        let t = EndpointTable::new([ep([198, 19, 1, 2], 2), ep([198, 19, 1, 3], 5)]).unwrap();
        let i = t.by_ip(u32::from(Ipv4Addr::new(198, 19, 1, 3))).unwrap();
        assert_eq!(t.get(i).port, PortId(5));
        assert_eq!(
            t.by_port(PortId(2)).map(|i| t.get(i).ip),
            Some(Ipv4Addr::new(198, 19, 1, 2))
        );
        assert_eq!(t.by_port(PortId(3)), None);
        assert_eq!(t.by_port(PortId(900)), None);
        assert!(matches!(
            EndpointTable::new([ep([1, 1, 1, 1], 2), ep([1, 1, 1, 1], 3)]),
            Err(EndpointError::DuplicateIp(_))
        ));
        assert!(matches!(
            EndpointTable::new([ep([1, 1, 1, 1], 2), ep([1, 1, 1, 2], 2)]),
            Err(EndpointError::DuplicatePort(_))
        ));
    }
}
