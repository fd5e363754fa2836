//! The browsable tree of a repository, as the mount shows it:
//!
//! ```text
//! MACHINE/                 one folder per machine
//! MACHINE/POINT/           one folder per restore point, names sort in creation order
//! MACHINE/POINT/NAME.img   each disk of the point, as a full image
//! MACHINE/POINT/NAME-partN.img  each partition N of that disk (MBR or GPT)
//! MACHINE/latest           symlink to the newest POINT
//! ```
//!
//! Every call reads committed index state, so points ingested while a
//! mount is up appear without remounting. Partition tables are read from
//! the image the first time a point's folder is listed and kept: a
//! committed image never changes, and retention does not run while a mount
//! is up (`repo` readers lock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::ids::{BlockNo, MachineId, PointDiskId, PointId};
use crate::image::{ImageReader, Store};
use crate::index::{Index, PointDiskRow};
use crate::partition::Partition;

/// Name of the symlink to a machine's newest point.
pub const LATEST: &str = "latest";
/// Suffix of disk image files.
pub const IMAGE_SUFFIX: &str = ".img";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Machine(MachineId),
    Point(PointId),
    Latest(MachineId),
    Image(PointDiskId),
    /// Partition number `.1` of a disk image.
    Partition(PointDiskId, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, Copy)]
pub struct NodeAttr {
    pub kind: NodeKind,
    pub size: u64,
    /// Bytes holding data (st_blocks): copy tools look for holes only in
    /// files whose allocated size is below their length.
    pub allocated: u64,
    /// Unix seconds: the point's creation time for points and images.
    pub mtime: i64,
}

pub struct Catalog {
    store: Arc<Store>,
    partitions: Mutex<HashMap<PointDiskId, Arc<Vec<Partition>>>>,
}

/// Name of partition `number` of disk `disk`, as `export` takes it.
pub fn partition_name(disk: &str, number: u32) -> String {
    format!("{disk}-part{number}")
}

/// File name of partition `number` of disk `disk` in the mount.
pub fn partition_file_name(disk: &str, number: u32) -> String {
    format!("{}{IMAGE_SUFFIX}", partition_name(disk, number))
}

impl Catalog {
    pub fn new(store: Arc<Store>) -> Catalog {
        Catalog { store, partitions: Mutex::new(HashMap::new()) }
    }

    /// The partitions of a disk image, read once. A table that cannot be
    /// read (a damaged block) or does not hold together shows no
    /// partitions, with the reason logged: the whole image stays listed,
    /// and reading it reports the damage itself.
    fn partitions_of(&self, d: &PointDiskRow, seq: i64) -> Arc<Vec<Partition>> {
        if let Some(p) = self.partitions.lock().unwrap().get(&d.id) {
            return p.clone();
        }
        let img = ImageReader::new(self.store.clone(), d.lineage, seq, d.size);
        let parts = match img.partition_table() {
            Ok(t) => {
                for why in &t.problems {
                    log::warn!("disk {} (point disk {}): partition table: {why}", d.name, d.id.0);
                }
                Arc::new(t.partitions)
            }
            Err(e) => {
                log::error!("disk {} (point disk {}): cannot read its partition table: {e}", d.name, d.id.0);
                return Arc::new(Vec::new());
            }
        };
        self.partitions.lock().unwrap().insert(d.id, parts.clone());
        parts
    }

    /// Children of a directory node, with their names.
    pub fn children(&self, node: Node) -> Result<Vec<(Node, String)>> {
        if let Node::Point(p) = node {
            return self.point_children(p);
        }
        self.store.chain.with_index(|idx| {
            Ok(match node {
                Node::Root => idx.machines()?.into_iter().map(|(id, n)| (Node::Machine(id), n)).collect(),
                Node::Machine(m) => {
                    let points = idx.points(m)?;
                    let mut v: Vec<(Node, String)> =
                        points.iter().map(|p| (Node::Point(p.id), p.name())).collect();
                    if !points.is_empty() {
                        v.push((Node::Latest(m), LATEST.to_string()));
                    }
                    v
                }
                Node::Point(_) | Node::Latest(_) | Node::Image(_) | Node::Partition(..) => Vec::new(),
            })
        })
    }

    /// A point's disk images, then the partitions of each.
    fn point_children(&self, p: PointId) -> Result<Vec<(Node, String)>> {
        let found = self.store.chain.with_index(|idx| {
            Ok(match idx.point(p)? {
                Some(point) => Some((point.seq, idx.point_disks(p)?)),
                None => None,
            })
        })?;
        let Some((seq, disks)) = found else { return Ok(Vec::new()) };
        let mut v: Vec<(Node, String)> =
            disks.iter().map(|d| (Node::Image(d.id), format!("{}{IMAGE_SUFFIX}", d.name))).collect();
        for d in &disks {
            for part in self.partitions_of(d, seq).iter() {
                let name = partition_file_name(&d.name, part.number);
                // A disk may itself be named like a partition file: the
                // disk keeps the name.
                if v.iter().any(|(_, n)| *n == name) {
                    log::warn!("partition {} of disk {} not shown: another disk has the file name {name}", part.number, d.name);
                    continue;
                }
                v.push((Node::Partition(d.id, part.number), name));
            }
        }
        Ok(v)
    }

    /// A partition of a disk image, if the disk (still) exists and has it,
    /// with the disk's point and the bytes of the disk that hold data (see
    /// [`allocated`]), all from one use of the index.
    fn partition(&self, d: PointDiskId, number: u32) -> Result<Option<(PointDiskRow, crate::index::PointRow, Partition, u64)>> {
        let row = self.store.chain.with_index(|idx| {
            let Some(disk) = idx.point_disk(d)? else { return Ok(None) };
            let Some(point) = idx.point(disk.point)? else { return Ok(None) };
            let data = allocated(idx, &disk, point.seq, self.store.block_size)?;
            Ok(Some((disk, point, data)))
        })?;
        Ok(row.and_then(|(disk, point, data)| {
            let part = self.partitions_of(&disk, point.seq).iter().find(|p| p.number == number).copied();
            part.map(|part| (disk, point, part, data))
        }))
    }

    pub fn lookup(&self, parent: Node, name: &str) -> Result<Option<Node>> {
        Ok(self.children(parent)?.into_iter().find(|(_, n)| n == name).map(|(node, _)| node))
    }

    /// Attributes of a node; `None` if it no longer exists.
    pub fn attr(&self, node: Node) -> Result<Option<NodeAttr>> {
        if let Node::Partition(d, n) = node {
            let Some((_, point, part, disk_data)) = self.partition(d, n)? else { return Ok(None) };
            // Not counted per partition, which would cost a pass over its
            // versions on every lookup: at most the whole disk's data. That
            // is enough for `cp`, which looks for holes (by seeking) only
            // in files allocated below their length, to copy a partition
            // of a mostly empty disk sparsely, reading only its data.
            return Ok(Some(NodeAttr {
                kind: NodeKind::File,
                size: part.len,
                allocated: part.len.min(disk_data),
                mtime: point.created,
            }));
        }
        self.store.chain.with_index(|idx| {
            let dir = |mtime| Some(NodeAttr { kind: NodeKind::Dir, size: 0, allocated: 0, mtime });
            Ok(match node {
                Node::Root => dir(0),
                Node::Machine(m) => match idx.machine_name(m)? {
                    Some(_) => dir(idx.latest_point(m)?.map(|p| p.created).unwrap_or(0)),
                    None => None,
                },
                Node::Point(p) => idx.point(p)?.and_then(|p| dir(p.created)),
                Node::Latest(m) => idx.latest_point(m)?.map(|p| NodeAttr {
                    kind: NodeKind::Symlink,
                    size: p.name().len() as u64,
                    allocated: 0,
                    mtime: p.created,
                }),
                Node::Image(d) => match idx.point_disk(d)? {
                    Some(disk) => match idx.point(disk.point)? {
                        Some(p) => Some(NodeAttr {
                            kind: NodeKind::File,
                            size: disk.size,
                            allocated: allocated(idx, &disk, p.seq, self.store.block_size)?,
                            mtime: p.created,
                        }),
                        None => None,
                    },
                    None => None,
                },
                Node::Partition(..) => unreachable!("handled above"),
            })
        })
    }

    /// Target of the `latest` symlink: the newest point's folder name.
    pub fn readlink(&self, node: Node) -> Result<Option<String>> {
        match node {
            Node::Latest(m) => self.store.chain.with_index(|idx| Ok(idx.latest_point(m)?.map(|p| p.name()))),
            _ => Ok(None),
        }
    }

    /// Opens a disk image or one of its partitions for reading.
    pub fn open(&self, node: Node) -> Result<Option<ImageReader>> {
        match node {
            Node::Image(d) => self.open_image(d),
            Node::Partition(d, n) => Ok(self.partition(d, n)?.map(|(disk, point, part, _)| {
                ImageReader::new(self.store.clone(), disk.lineage, point.seq, disk.size).window(part.start, part.len)
            })),
            _ => Ok(None),
        }
    }

    /// Opens a disk image for reading.
    pub fn open_image(&self, d: PointDiskId) -> Result<Option<ImageReader>> {
        let row = self.store.chain.with_index(|idx| {
            Ok(match idx.point_disk(d)? {
                Some(disk) => idx.point(disk.point)?.map(|p| (disk, p.seq)),
                None => None,
            })
        })?;
        Ok(row.map(|(disk, seq)| ImageReader::new(self.store.clone(), disk.lineage, seq, disk.size)))
    }
}

/// Bytes of a disk that hold data, as st_blocks reports them: its blocks
/// with data, whole. Unknown for disks recorded before the count was kept:
/// then fully allocated, which is never wrong for a copy, only slower. A
/// count of none is checked first, since some tools (GNU tar) skip a file
/// allocated as empty without reading it.
fn allocated(idx: &Index, disk: &PointDiskRow, seq: i64, block_size: u32) -> Result<u64> {
    let bs = u64::from(block_size);
    Ok(match disk.data_blocks {
        None => disk.size,
        // Checked over a bounded number of blocks, since this runs on
        // every lookup: past it, fully allocated.
        Some(0) => {
            let end = BlockNo(disk.size.div_ceil(bs));
            match idx.next_data_block_within(disk.lineage, seq, BlockNo(0), end, 1 << 16)? {
                Some(None) => 0,
                _ => disk.size,
            }
        }
        Some(n) => n.saturating_mul(bs).min(disk.size),
    })
}
