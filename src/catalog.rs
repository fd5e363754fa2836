//! The browsable tree of a repository, as the mount shows it:
//!
//! ```text
//! MACHINE/                 one folder per machine
//! MACHINE/POINT/           one folder per restore point, names sort in creation order
//! MACHINE/POINT/NAME.img   each disk of the point, as a full image
//! MACHINE/latest           symlink to the newest POINT
//! ```
//!
//! Every call reads committed index state, so points ingested while a
//! mount is up appear without remounting.

use std::sync::Arc;

use crate::error::Result;
use crate::ids::{MachineId, PointDiskId, PointId};
use crate::image::{ImageReader, Store};

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
    /// Unix seconds: the point's creation time for points and images.
    pub mtime: i64,
}

pub struct Catalog {
    store: Arc<Store>,
}

impl Catalog {
    pub fn new(store: Arc<Store>) -> Catalog {
        Catalog { store }
    }

    /// Children of a directory node, with their names.
    pub fn children(&self, node: Node) -> Result<Vec<(Node, String)>> {
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
                Node::Point(p) => idx
                    .point_disks(p)?
                    .into_iter()
                    .map(|d| (Node::Image(d.id), format!("{}{IMAGE_SUFFIX}", d.name)))
                    .collect(),
                Node::Latest(_) | Node::Image(_) => Vec::new(),
            })
        })
    }

    pub fn lookup(&self, parent: Node, name: &str) -> Result<Option<Node>> {
        Ok(self.children(parent)?.into_iter().find(|(_, n)| n == name).map(|(node, _)| node))
    }

    /// Attributes of a node; `None` if it no longer exists.
    pub fn attr(&self, node: Node) -> Result<Option<NodeAttr>> {
        self.store.chain.with_index(|idx| {
            let dir = |mtime| Some(NodeAttr { kind: NodeKind::Dir, size: 0, mtime });
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
                    mtime: p.created,
                }),
                Node::Image(d) => match idx.point_disk(d)? {
                    Some(disk) => idx.point(disk.point)?.map(|p| NodeAttr {
                        kind: NodeKind::File,
                        size: disk.size,
                        mtime: p.created,
                    }),
                    None => None,
                },
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
