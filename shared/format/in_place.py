"""Which files of a folder source their programs rewrite in place, block by block.

Inside a folder source such files are cut into fixed, aligned chunks like an image source
(in repositories that record fixed chunking), so a day of scattered page writes costs a
few small chunks instead of re-chunking the whole file (archiver.py). The defaults live
here, apart, because the agent's configuration reads them before anything heavier loads.
"""

# Databases, mail stores and virtual disks, matched case-insensitively against a file's name.
DEFAULT_IN_PLACE_PATTERNS = (
    "*.db", "*.sqlite", "*.sqlite3", "*.db3",  # SQLite and friends
    "*.mdf", "*.ndf", "*.ldf",  # SQL Server
    "*.ibd", "ibdata*",  # MySQL / MariaDB InnoDB
    "*.edb", "*.stm",  # Exchange, Windows Search
    "*.pst", "*.ost", "*.nsf",  # Outlook, Notes
    "*.mdb", "*.accdb", "*.fdb", "*.gdb",  # Access, Firebird
    "*.vhd", "*.vhdx", "*.avhd", "*.avhdx", "*.vmdk", "*.vdi", "*.qcow2", "*.img", "*.raw",  # VM disks
)
# Below this size a file is a chunk or two whatever the chunker: FastCDC keeps it whole.
DEFAULT_IN_PLACE_MIN_SIZE = 1024 * 1024
