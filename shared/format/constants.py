"""The numbers of the format, each with the reason it has that value.

Values that a reader needs (sizes of nonces, tags, ids; the pack trailer) are fixed by
format version 1. Values that only a writer uses (pack target size, zstd level, how many
uploads run at once) may change without breaking old repositories. The chunker's
parameters are copied into each repository's `config` at init, so changing them here
affects new repositories only and every client of one repository keeps chunking alike
(which is what makes deduplication work between a weekly full and its incrementals).
"""

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# The version written into every JSON object and checked on read. A reader refuses a
# newer version instead of guessing.
FORMAT_VERSION = 1

# --- chunking -------------------------------------------------------------------------

# Content-defined chunking of files (FastCDC 2020, normalisation level 1).
# ~1 MiB chunks keep the index at about a thousand entries per GiB (an SMB server with a
# few TiB stays within a few hundred MiB of index in memory), keep per-blob overhead (28
# bytes of nonce and tag, ~50 bytes of index) far below 0.1 %, and still limit what an
# edit in the middle of a large file costs to a chunk or two. Files smaller than the
# minimum are one chunk each, so small files dedupe as whole files.
CDC_MIN_SIZE = 512 * KiB
# FastCDC starts looking for a cut point only after CDC_MIN_SIZE, so the mean chunk is
# larger than this parameter: about 1.3 MiB measured on random data.
CDC_AVG_SIZE = 1 * MiB
# A hard cap: runs of identical bytes (zeros in a preallocated file) have no cut points.
CDC_MAX_SIZE = 8 * MiB
CDC_NORMALIZATION = 1

# Disk images and block devices are cut into fixed, aligned chunks instead: a filesystem
# inside an image changes blocks in place, so a 4 KiB write must change exactly one chunk
# (CDC would be no better here and cuts would wander when block contents change). 1 MiB
# keeps scattered writes cheap (each costs at most 1 MiB of upload) and is the alignment
# of partitions made by every modern partitioning tool.
IMAGE_CHUNK_SIZE = 1 * MiB

# In repositories whose config has "fixed_chunks" (all made since 2026-11), the fixed chunk size
# depends on the size of what is cut: the smallest power of two that cuts it into at most
# FIXED_CHUNKS_PER_FILE chunks, within [FIXED_CHUNK_MIN, FIXED_CHUNK_MAX]. The same rule
# serves image sources and the files of a folder that are rewritten in place (databases,
# VM disks: IN_PLACE_PATTERNS). Measured on the benchmark's database and disk image
# (docs/format.md, "Fixed chunks"): 1,308 scattered 4 KiB writes change 478 chunks of
# 1 MiB (209 MiB stored) but 1,261 chunks of 32 KiB (20 MiB stored). 32 KiB is where the
# cost of a scattered write stops being dominated by the chunk (below it, halving the chunk
# halves the upload but doubles the index); the cap of 32,768 chunks per file keeps a
# file's chunk list and its share of the index bounded (a 2 TiB disk still gets 1 MiB
# chunks, 2 M of them, as before).
FIXED_CHUNK_MIN = 32 * KiB
FIXED_CHUNK_MAX = 1 * MiB
FIXED_CHUNKS_PER_FILE = 32 * KiB

# In a sparse regular file, a hole (as reported by SEEK_HOLE) shorter than this is read
# as zeros and chunked with the data around it: tiny holes would only fragment chunks.
SPARSE_HOLE_MIN = 1 * MiB

# Streamed reads of files go through a buffer this large (a multiple of the largest chunk)
# so that a multi-GiB file never sits in memory.
READ_BUFFER_SIZE = 2 * CDC_MAX_SIZE

# --- packs ----------------------------------------------------------------------------

# A pack is closed and uploaded once it holds this many bytes (it may exceed it by at most
# one blob). Tens of MiB amortise the per-request cost of object storage (S3 charges per
# PUT and GET, and small objects upload slowly), while the memory a backup needs stays
# bounded (open packs plus packs in flight) and an interrupted backup loses at most about
# one pack of upload.
PACK_TARGET_SIZE = 16 * MiB
# ... or once it holds this many blobs, whichever comes first. Tiny files make tiny blobs
# (~100 bytes sealed), so a 16 MiB pack of them would list ~150,000 blobs; its header and
# its index file (one per pack) would then take hundreds of MiB to decode at once. 32,768
# entries keep an index file near 3.5 MB of JSON (~10 MB decoded) whatever the files.
PACK_MAX_BLOBS = 32_768

# How many sealed packs may be uploading at once. More overlap hides latency to S3; each
# one costs PACK_TARGET_SIZE of memory.
UPLOADS_IN_FLIGHT = 2

# The pack trailer: header length (u32, little endian) followed by this magic.
PACK_MAGIC = b"RPK1"
PACK_TRAILER_SIZE = 8

# One header entry: type (u8), id (32), offset (u64), length (u32), raw length (u32).
PACK_HEADER_ENTRY_SIZE = 1 + 32 + 8 + 4 + 4

# --- cryptography ---------------------------------------------------------------------

KEY_SIZE = 32  # AES-256 and BLAKE3 keys
CHUNK_ID_SIZE = 32  # keyed BLAKE3 output; collisions are not a practical concern
NONCE_SIZE = 12  # the 96-bit nonce AES-GCM is designed for; random per blob
TAG_SIZE = 16  # full-length GCM tag
# With random 96-bit nonces, NIST SP 800-38D bounds one key to 2**32 encryptions; at
# ~1 MiB per blob that is 4 PiB of unique data per repository, far above an SMB's needs.

# scrypt for new passphrase key slots: N=2**16, r=8 needs 64 MiB (128 * N * r bytes) and
# ~0.25 s on a current core: once per backup, and ~2**16 times the cost of a hash per guess
# for an offline guesser. It was N=2**17 (128 MiB) until 2026-11, which made the KDF the
# largest allocation of a backup (peak RSS 1.3x restic's, whose scrypt is calibrated to
# about 60 MiB). The parameters are stored in each key slot, so older slots still open
# with theirs, and they can be raised again for new slots.
# The work of N = 2^16 (~0.1 s here) in 32 MiB: p runs one after another in the same
# memory, and memory is what every agent command peaks on (docs/format.md, key slots).
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 2
SCRYPT_SALT_SIZE = 16

# --- compression ----------------------------------------------------------------------

# zstd level 3 (its default) compresses text about 7:1 at ~300 MiB/s per core; higher
# levels cost much more CPU for a few percent.
ZSTD_LEVEL = 3
# A blob is stored compressed only if that saves at least 1/32 of its size; otherwise
# decompression on restore costs CPU for nothing (already compressed media, archives).
COMPRESSION_MIN_SAVING = 1 / 32

# A dictionary is named by the SHA-256 of its object; a ZSTD_DICT body starts with it.
DICTIONARY_ID_SIZE = 32
# Dictionaries (format.md §3): a file cut in small fixed chunks loses what zstd would have
# matched across its chunks (+12 % on the benchmark's database at 32 KiB). A dictionary
# trained on the file's own chunks wins most of it back (171.5 -> 153.0 MiB there; 1 MiB
# chunks: 151.3). 112 KiB is zstd's default dictionary size; doubling it gains ~1 %.
DICTIONARY_SIZE = 112 * 1024
# Chunks read to train it, spread evenly over the file: ~4 MiB at 32 KiB, ~0.1 s of fastCover.
DICTIONARY_SAMPLES = 128
# Above this chunk size a dictionary gains little (~1 % at 512 KiB, nothing at 1 MiB).
DICTIONARY_MAX_CHUNK = 256 * 1024
# Below this, the dictionary (~50 KiB stored) would eat much of what it saves.
DICTIONARY_MIN_FILE = 8 * 1024 * 1024
# A dictionary is used only if the samples compress with it to at most this share of
# their size: an encrypted or already compressed database gets none.
DICTIONARY_MAX_RATIO = 0.9
# fastCover's parameters (segment size k, d-mer size d, log2 of its frequency table f):
# fixed rather than searched, which takes 20-30 s instead of ~0.1 s for ~0.5 % more.
DICTIONARY_TRAINING = {"k": 1024, "d": 8, "f": 20, "accel": 1}
# Readers refuse a dictionary object larger than this.
MAX_DICTIONARY_SIZE = 1024 * 1024
# Dictionaries a reader keeps loaded (each ~112 KiB plus its zstd tables).
DICTIONARIES_KEPT = 16

# --- object keys ----------------------------------------------------------------------

CONFIG_KEY = "config"
KEYS_PREFIX = "keys/"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
SNAPSHOTS_PREFIX = "snapshots/"
DICTIONARIES_PREFIX = "dicts/"
