//! Inode numbers for catalog nodes: computed, not allocated, so the table
//! needs no state and an inode stays valid for the life of its object.
//! The top byte says the node type, the rest is the row id; for a
//! partition, the next byte is its number and the low 48 bits the disk's
//! row id.

use fuser::INodeNo;

use crate::catalog::Node;
use crate::ids::{MachineId, PointDiskId, PointId};

const SHIFT: u32 = 56;
const ID_MASK: u64 = (1 << SHIFT) - 1;
const MACHINE: u64 = 1;
const POINT: u64 = 2;
const LATEST: u64 = 3;
const IMAGE: u64 = 4;
const PARTITION: u64 = 5;
const PART_SHIFT: u32 = 48;
const PART_ID_MASK: u64 = (1 << PART_SHIFT) - 1;
const _: () = assert!(crate::partition::MAX_NUMBER as u64 <= ID_MASK >> PART_SHIFT);

pub fn to_ino(node: Node) -> INodeNo {
    let (tag, id) = match node {
        Node::Root => return INodeNo::ROOT,
        Node::Machine(MachineId(id)) => (MACHINE, id),
        Node::Point(PointId(id)) => (POINT, id),
        Node::Latest(MachineId(id)) => (LATEST, id),
        Node::Image(PointDiskId(id)) => (IMAGE, id),
        Node::Partition(PointDiskId(id), n) => {
            // 2^48 disk rows would take longer to ingest than any machine
            // lives; past that, partitions of two disks would share inodes.
            debug_assert!(id as u64 <= PART_ID_MASK, "point disk id {id} too large for a partition inode");
            (PARTITION, ((n as i64) << PART_SHIFT) | (id & PART_ID_MASK as i64))
        }
    };
    INodeNo((tag << SHIFT) | (id as u64 & ID_MASK))
}

pub fn from_ino(ino: INodeNo) -> Option<Node> {
    let v = u64::from(ino);
    if ino == INodeNo::ROOT {
        return Some(Node::Root);
    }
    let id = (v & ID_MASK) as i64;
    match v >> SHIFT {
        MACHINE => Some(Node::Machine(MachineId(id))),
        POINT => Some(Node::Point(PointId(id))),
        LATEST => Some(Node::Latest(MachineId(id))),
        IMAGE => Some(Node::Image(PointDiskId(id))),
        PARTITION => Some(Node::Partition(PointDiskId(id & PART_ID_MASK as i64), (id as u64 >> PART_SHIFT) as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_distinct() {
        let nodes = [
            Node::Root,
            Node::Machine(MachineId(1)),
            Node::Point(PointId(1)),
            Node::Latest(MachineId(1)),
            Node::Image(PointDiskId(1)),
            Node::Image(PointDiskId(ID_MASK as i64)),
            Node::Partition(PointDiskId(1), 1),
            Node::Partition(PointDiskId(1), 2),
            Node::Partition(PointDiskId(2), 1),
            Node::Partition(PointDiskId(PART_ID_MASK as i64), crate::partition::MAX_NUMBER),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in nodes {
            let ino = to_ino(n);
            assert_eq!(from_ino(ino), Some(n));
            assert!(seen.insert(u64::from(ino)), "{n:?} collides");
        }
        assert_eq!(from_ino(INodeNo(2)), None);
        assert_eq!(from_ino(INodeNo(9 << SHIFT)), None);
    }
}
