# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_cbtfs_global_optspecs
    string join \n v/verbose q/quiet h/help
end

function __fish_cbtfs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_cbtfs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_cbtfs_using_subcommand
    set -l cmd (__fish_cbtfs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c cbtfs -n "__fish_cbtfs_needs_command" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "init" -d 'Create a new repository'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "ingest" -d 'Add a restore point (full, by changed-block map, or by full scan)'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "list" -d 'List machines, restore points and disks'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "mount" -d 'Serve every restore point as a disk image through read-only FUSE'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "verify" -d 'Re-read every stored block and check it'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "forget" -d 'Remove restore points, by name or by a keep policy (no data is rewritten)'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "gc" -d 'Reclaim the space of blocks no restore point uses'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "protect" -d 'Protect a restore point from forget, or lift the protection'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "stats" -d 'Sizes, dedup and compression ratios, garbage'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "export" -d 'Write one disk of a restore point to a file (sparse raw, or qcow2)'
complete -c cbtfs -n "__fish_cbtfs_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand init" -l block-size -d 'Block size: a power of two from 4K to 4M, e.g. 64K, 1M or 131072' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand init" -l pack-size -d 'Pack files are closed at about this size, from 1M to 64G; later ingests append to the newest pack until then. Larger packs mean fewer files, smaller ones less copying when gc rewrites a pack' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand init" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand init" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand init" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l disk -d 'A disk of this point and its source: a raw image file, a block device, a qcow2 image, or an NBD export (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH); repeat per disk' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l changes -d 'Changed-block map (JSON [{"offset":BYTES,"length":BYTES},...]) of a disk since --since' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l bitmap -d 'QEMU dirty bitmap of a disk (qcow2 or NBD source) holding the changes since checkpoint BITMAP (or since --since, if given)' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l format -d 'Format of a disk\'s source file or block device: raw or qcow2. Needed for a file that starts like a qcow2 image but is not named *.qcow2 (a raw disk\'s first bytes are its guest\'s to write), and for qcow2 on a block device' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l since -d 'Checkpoint the maps or bitmaps are relative to; must be the latest point\'s checkpoint to be trusted' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l checkpoint -d 'Checkpoint id of this point (unique per machine); later maps are relative to it' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l full -d 'Full backup of every disk, whatever the chain holds'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -l json -d 'Print a JSON summary on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand ingest" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand list" -l json -d 'Print JSON on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand list" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand list" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand list" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand mount" -l allow-other -d 'Let other users read the tree too (a VM run by another user, e.g. libvirt\'s QEMU); for a mount by a user other than root, /etc/fuse.conf must say user_allow_other'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand mount" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand mount" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand mount" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand verify" -l json -d 'Print a JSON report on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand verify" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand verify" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand verify" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l keep-last -d 'Keep the newest N points' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l keep-daily -d 'Keep the newest point of each of the newest N days (UTC)' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l keep-weekly -d 'Keep the newest point of each of the newest N weeks (Monday to Sunday, UTC)' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l keep-monthly -d 'Keep the newest point of each of the newest N months (UTC)' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l dry-run -d 'Show what would be forgotten; change nothing'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l wait -d 'Wait for mounts, exports, verifies and ingests of the repository to end instead of failing (exit 4)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -l json -d 'Print a JSON summary on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand forget" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -l max-garbage -d 'Rewrite packs in which at least this share of the bytes is garbage (0 to 100)' -r
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -l dry-run -d 'Report what would be reclaimed; change nothing'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -l wait -d 'Wait for mounts, exports, verifies and ingests of the repository to end instead of failing (exit 4)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -l json -d 'Print a JSON summary on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand gc" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand protect" -l off -d 'Lift the protection instead'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand protect" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand protect" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand protect" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand stats" -l json -d 'Print JSON on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand stats" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand stats" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand stats" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand export" -l format -d 'raw (sparse) or qcow2 (through qemu-img)' -r -f -a "raw\t''
qcow2\t''"
complete -c cbtfs -n "__fish_cbtfs_using_subcommand export" -l json -d 'Print a JSON summary on stdout'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand export" -s v -l verbose -d 'More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand export" -s q -l quiet -d 'No progress bars, warnings or notes; errors and results only'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand export" -s h -l help -d 'Print help'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "init" -d 'Create a new repository'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "ingest" -d 'Add a restore point (full, by changed-block map, or by full scan)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "list" -d 'List machines, restore points and disks'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "mount" -d 'Serve every restore point as a disk image through read-only FUSE'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "verify" -d 'Re-read every stored block and check it'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "forget" -d 'Remove restore points, by name or by a keep policy (no data is rewritten)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "gc" -d 'Reclaim the space of blocks no restore point uses'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "protect" -d 'Protect a restore point from forget, or lift the protection'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "stats" -d 'Sizes, dedup and compression ratios, garbage'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "export" -d 'Write one disk of a restore point to a file (sparse raw, or qcow2)'
complete -c cbtfs -n "__fish_cbtfs_using_subcommand help; and not __fish_seen_subcommand_from init ingest list mount verify forget gc protect stats export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
