/*
 * redis.c - the Redis store (redis://): a hash per message and sorted sets
 * that answer "what is due" in O(log n); every change is one Lua script, so
 * it is atomic. Durable only when the server fsyncs its AOF on every write
 * (appendonly yes, appendfsync always), which open checks. docs/stores/redis.md
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <ackbox/idmap.h>
#include <ackbox/rowmerge.h>
#include <ackbox/store.h>


#define SCHEMA_NAME "ackbox-outbox"
#define SCHEMA_VERSION 2 /* 2: packed batches */
#define PAGE 64        /* rows per list page */
#define SWEEP 1000     /* ids per recover/requeue/purge script call */
#define PACK_MIN 4     /* fewer messages are written as rows */
#define PACK_MAX_BYTES (16u << 20) /* so are larger batches: one value stays modest */
#define UNPACK_STEP 16 /* batches per script call when unpacking them all */

/*
 * The layout, every key under the hash tag {P} (P = ?prefix=, default
 * "ackbox") so that one outbox lives in one cluster slot:
 *
 *   {P}:meta      hash: schema, version
 *   {P}:m:<id>    hash per message: state attempts created updated due topic
 *                 key ct headers payload last_error last_code lease owner plen
 *                 (plen: the payload's length when written; a claim fails a
 *                 message whose payload is no longer that long, or whose
 *                 fields do not parse, and logs it once)
 *   {P}:due       zset of SENDING/RETRYING ids by due_ms    (claim, recover, has_pending)
 *   {P}:created   zset of SENDING/RETRYING ids by created_ms (oldest pending)
 *   {P}:s0 :s1 :s2  zsets, score 0, of ids per state: lexicographic = id order
 *                 (list by state; counts by ZCARD)
 *   {P}:all       zset, score 0, of every id (list all)
 *   {P}:failed    zset of FAILED ids by updated_ms (purge by age)
 *   {P}:bytes     string: the sum of every stored payload's length (the
 *                 backlog bound, store.max_bytes), kept by every script that
 *                 adds or removes a message; made at open for a store from
 *                 before it
 *   {P}:h:<id>    list per message: its attempt history (store ABI 1.6), the
 *                 last ACKBOX_HISTORY_MAX notes "at_ms:outcome:code:text",
 *                 oldest first; written by the script that changes the
 *                 message, deleted with its hash. Absent: no history (yet)
 *
 * Packed batches (layout version 2): an insert of PACK_MIN or more messages
 * with one due (not under per-key order) writes them as one value instead
 * of a row each, "packed until touched":
 *
 *   {P}:b:<bseq>  hash: data (the members: each a MessagePack array of the
 *                 nine strings lua_insert takes per message, but the id in
 *                 its 16 bytes), ids (the members' ids, 16 bytes each, to
 *                 name them when data is damaged), n, live (members not yet
 *                 acked), bytes (their payloads'), owner, lease (0 at
 *                 insert, incremented by every claim of the batch), due,
 *                 created, taken (when the last claim or recovery made its
 *                 members due: unpacked rows are then)
 *   {P}:bg:<bseq> string: a bit per member (LSB first) the holder acked
 *   {P}:bdue      zset of bseqs by due; {P}:bcreated zset of bseqs by created
 *   {P}:bn        string: the live members of every batch (counted as SENDING)
 *   {P}:bseq      string: the last bseq given out
 *
 * A batch is held, under its lease, by the handle that inserted it (if its
 * relay has the messages in memory) or by the last that claimed it (a
 * claim takes a due batch whole): only that handle knows the members (an
 * in-memory map, id -> batch and index), and only its acks under that
 * lease stay in the batch: they set the member's bit and lower live; the
 * batch goes with its last member. Anything else first unpacks the batch
 * (UNPACK): its members that are not acked become rows as an insert of
 * them would have written, under the batch's lease, so every other script
 * works on rows alone. A change other than an ack unpacks its member's
 * batch; list, get, force and installing per-key order unpack every batch.
 *
 * Ids are the canonical text form: time-ordered, so lexicographic order is
 * id order. The lease is a per-message counter that every claim increments;
 * a change whose lease differs from the stored one is skipped (fencing).
 * `owner` names the relay handle that inserted or last claimed the message
 * (owner_name()): crash recovery at open takes only leases whose process is
 * gone, never those of a live relay (another publisher on the same prefix).
 *
 * Per-key order (delivery.order=key, docs/ordering.md), once installed
 * (meta field order = 1; every script then keeps these, whatever the
 * handle's mode):
 *
 *   {P}:k:<key>   zset, score 0, of the ids of one key in any state: its
 *                 first member (lowest id) is the key's head
 *   {P}:ready     zset by due_ms of the rows an ordered claim may take:
 *                 pending and either without a key or the head of theirs
 */
enum { K_META, K_DUE, K_CREATED, K_S0, K_S1, K_S2, K_ALL, K_FAILED, K_BYTES, K_COUNT };
static const char *const key_suffix[K_COUNT] = {"meta", "due", "created", "s0",   "s1",
                                                "s2",   "all", "failed",  "bytes"};

/* The fields of a row, in the order every script and HMGET returns them. */
enum { F_STATE, F_ATTEMPTS, F_CREATED, F_UPDATED, F_DUE, F_TOPIC, F_KEY, F_CT, F_HEADERS,
       F_PAYLOAD, F_LAST_ERROR, F_LAST_CODE, F_LEASE, F_PLEN, F_COUNT };
static const char *const field_name[F_COUNT] = {
    "state", "attempts", "created", "updated", "due", "topic", "key",
    "ct",    "headers",  "payload", "last_error", "last_code", "lease", "plen"};

/* The per-key order helpers every script gets (no-ops until installed).
 * ord_due: a pending row's due changed, or it became pending (requeue);
 * ord_gone: deleted; ord_failed: FAILED; ord_insert: a new row. */
#define LUA_ORDER                                                                                  \
	"local ORD = redis.call('HGET', KEYS[1], 'order') == '1'\n"                               \
	"local BASE = string.sub(MP, 1, #MP - 2)\n"                                                \
	"local K_READY, KP = BASE .. 'ready', BASE .. 'k:'\n"                                     \
	"local function ord_first(key) return redis.call('ZRANGE', KP .. key, 0, 0)[1] end\n"     \
	"local function ord_due(id, key, due, add)\n"                                             \
	"  if not ORD then return end\n"                                                          \
	"  if key and ord_first(key) ~= id then return end\n"                                     \
	"  if add then redis.call('ZADD', K_READY, due, id)\n"                                    \
	"  else redis.call('ZADD', K_READY, 'XX', due, id) end\n"                                 \
	"end\n"                                                                                    \
	"local function ord_failed(id) if ORD then redis.call('ZREM', K_READY, id) end end\n"     \
	"local function ord_gone(id, key)\n"                                                      \
	"  if not ORD then return end\n"                                                          \
	"  redis.call('ZREM', K_READY, id)\n"                                                     \
	"  if not key then return end\n"                                                          \
	"  redis.call('ZREM', KP .. key, id)\n"                                                   \
	"  local h = ord_first(key)\n"                                                            \
	"  if h then\n"                                                                            \
	"    local f = redis.call('HMGET', MP .. h, 'state', 'due')\n"                            \
	"    if f[1] and f[1] ~= '2' then redis.call('ZADD', K_READY, f[2], h) end\n"             \
	"  end\n"                                                                                  \
	"end\n"                                                                                    \
	"local function ord_insert(id, key, due)\n"                                               \
	"  if not ORD then return end\n"                                                          \
	"  if not key then redis.call('ZADD', K_READY, due, id) return end\n"                     \
	"  local before = ord_first(key)\n"                                                       \
	"  redis.call('ZADD', KP .. key, 0, id)\n"                                                \
	"  if ord_first(key) == id then\n"                                                        \
	"    if before then redis.call('ZREM', K_READY, before) end\n"                            \
	"    redis.call('ZADD', K_READY, due, id)\n"                                              \
	"  end\n"                                                                                  \
	"end\n"

#define ZCHUNK "4000" /* arguments per unpack(): Lua's C stack allows ~8000 */
_Static_assert(ACKBOX_ID_STRLEN == 37, "TEXT_ID writes the 36 characters of an id's text");

/*
 * ADD_ROWS writes rows as an insert does: each r = {id, created, due, topic,
 * flags, key, ct, headers, payload [, reason]}, flags three '0'/'1' (key,
 * content type, headers present). A row with a reason is written FAILED
 * with it (a packed member whose bytes are damaged). Each index set gets
 * its members in one ZADD per ZCHUNK: a redis.call costs more than the work
 * of a member (Redis's INFO commandstats, docs/stores/redis.md).
 */
#define LUA_ROWS                                                                                   \
	"local function zadd(k, t)\n"                                                              \
	"  for s = 1, #t, " ZCHUNK " do\n"                                                         \
	"    redis.call('ZADD', k, unpack(t, s, math.min(s + " ZCHUNK " - 1, #t)))\n"              \
	"  end\n"                                                                                  \
	"end\n"                                                                                    \
	"local function ADD_ROWS(rows, owner, now, lease)\n"                                       \
	"  local zdue, zcreated, z0, z2, zall, zfailed, bytes = {}, {}, {}, {}, {}, {}, 0\n"      \
	"  for _, r in ipairs(rows) do\n"                                                          \
	"    local id, created, due, flags, payload, why = r[1], r[2], r[3], r[5], r[9], r[10]\n"  \
	"    local h = {'state', why and '2' or '0', 'attempts', '0', 'created', created,\n"      \
	"               'updated', why and now or created, 'due', due, 'topic', r[4],\n"          \
	"               'payload', payload, 'last_code', '0', 'lease', lease or '0', 'owner', owner,\n" \
	"               'plen', tostring(#payload)}\n"                                             \
	"    if string.sub(flags, 1, 1) == '1' then h[#h + 1] = 'key'; h[#h + 1] = r[6] end\n"     \
	"    if string.sub(flags, 2, 2) == '1' then h[#h + 1] = 'ct'; h[#h + 1] = r[7] end\n"      \
	"    if string.sub(flags, 3, 3) == '1' then h[#h + 1] = 'headers'; h[#h + 1] = r[8] end\n" \
	"    if why then h[#h + 1] = 'last_error'; h[#h + 1] = why end\n"                         \
	"    redis.call('HSET', MP .. id, unpack(h))\n"                                           \
	"    bytes = bytes + #payload\n"                                                           \
	"    zall[#zall + 1] = 0; zall[#zall + 1] = id\n"                                          \
	"    if why then\n"                                                                        \
	"      z2[#z2 + 1] = 0; z2[#z2 + 1] = id\n"                                                \
	"      zfailed[#zfailed + 1] = now; zfailed[#zfailed + 1] = id\n"                          \
	"      ord_failed(id)\n"                                                                   \
	"    else\n"                                                                               \
	"      z0[#z0 + 1] = 0; z0[#z0 + 1] = id\n"                                                \
	"      zdue[#zdue + 1] = due; zdue[#zdue + 1] = id\n"                                      \
	"      zcreated[#zcreated + 1] = created; zcreated[#zcreated + 1] = id\n"                  \
	"      ord_insert(id, string.sub(flags, 1, 1) == '1' and r[6] or nil, due)\n"            \
	"    end\n"                                                                                \
	"  end\n"                                                                                  \
	"  zadd(K_DUE, zdue); zadd(K_CREATED, zcreated); zadd(SK(0), z0); zadd(SK(2), z2)\n"      \
	"  zadd(K_ALL, zall); zadd(K_FAILED, zfailed)\n"                                           \
	"  redis.call('INCRBY', K_BYTES, bytes)\n"                                                 \
	"end\n"

/*
 * UNPACK turns a packed batch into rows: its members not acked (bit clear
 * in {P}:bg:<bseq>) as the insert of them would have written them, but
 * under the batch's lease and, once a claim or recovery took the batch,
 * due when that said (taken). The members are
 * read one at a time: one that does not parse (nine strings, its id as in
 * ids), and every one after damage that stops the reading, becomes a
 * FAILED row naming the damage, with an empty payload; one whose id cannot
 * be told either is lost with its bytes, counted in LOST for the caller.
 * Returns the rows written.
 */
#define LUA_PACKED                                                                                 \
	"local K_BDUE, K_BCREATED, K_BN = BASE .. 'bdue', BASE .. 'bcreated', BASE .. 'bn'\n"     \
	"local BP, BG = BASE .. 'b:', BASE .. 'bg:'\n"                                             \
	"local LOST = 0\n"                                                                          \
	"local function TEXT_ID(b)\n"                                                              \
	"  local h = string.gsub(b, '.', function(ch) return string.format('%02x', string.byte(ch)) end)\n" \
	"  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)\n" \
	"         .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21, 32)\n"               \
	"end\n"                                                                                    \
	"local function member_ok(r, id)\n"                                                        \
	"  if type(r) ~= 'table' or #r ~= 9 then return false end\n"                               \
	"  for f = 1, 9 do if type(r[f]) ~= 'string' then return false end end\n"                 \
	"  return r[1] == id and #r[5] == 3 and tonumber(r[2]) ~= nil and tonumber(r[3]) ~= nil\n" \
	"end\n"                                                                                    \
	"local function UNPACK(bseq, now)\n"                                                       \
	"  local bk = BP .. bseq\n"                                                                \
	"  local h = redis.call('HMGET', bk, 'data', 'ids', 'n', 'owner', 'live', 'bytes', 'taken',\n" \
	"                       'lease')\n"                                                        \
	"  redis.call('ZREM', K_BDUE, bseq); redis.call('ZREM', K_BCREATED, bseq)\n"              \
	"  local gone = redis.call('GET', BG .. bseq) or ''\n"                                     \
	"  redis.call('DEL', bk, BG .. bseq)\n"                                                    \
	"  if not h[3] then return 0 end\n"                                                        \
	"  redis.call('DECRBY', K_BN, tonumber(h[5]) or 0)\n"                                      \
	"  redis.call('DECRBY', K_BYTES, tonumber(h[6]) or 0)\n"                                   \
	"  local n, ids = tonumber(h[3]) or 0, h[2] or ''\n"                                       \
	"  local m, off, data, bad = {}, 0, h[1] or '', n + 1\n"                                  \
	"  for i = 1, n do\n"                                                                      \
	"    local ok, o, v\n"                                                                     \
	"    if off >= 0 then ok, o, v = pcall(cmsgpack.unpack_one, data, off) end\n"             \
	"    if not ok or type(v) ~= 'table' or #v ~= 9 then bad = i; break end\n"               \
	"    m[i], off = v, o\n"                                                                   \
	"  end\n"                                                                                  \
	"  local named = (#ids == n * 16)\n"                                                       \
	"  local rows = {}\n"                                                                      \
	"  for i = 1, n do\n"                                                                      \
	"    local byte = string.byte(gone, math.floor((i - 1) / 8) + 1) or 0\n"                  \
	"    if math.floor(byte / 2 ^ ((i - 1) % 8)) % 2 == 0 then\n"                             \
	"      local r = m[i]\n"                                                                   \
	"      local id = named and string.sub(ids, (i - 1) * 16 + 1, i * 16)\n"                   \
	"                 or (type(r) == 'table' and r[1])\n"                                      \
	"      if type(id) ~= 'string' or #id ~= 16 then\n"                                        \
	"        LOST = LOST + 1\n"                                                                \
	"      elseif member_ok(r, id) then\n"                                                     \
	"        if h[7] then r[3] = h[7] end\n"                                                   \
	"        r[1] = TEXT_ID(id)\n"                                                             \
	"        rows[#rows + 1] = r\n"                                                            \
	"      else\n"                                                                             \
	"        local why = 'stored bytes damaged: member ' .. i .. ' of ' .. n ..\n"            \
	"                    ' of packed batch ' .. bseq .. ' does not parse'\n"                  \
	"        if i > bad then\n"                                                               \
	"          why = 'stored bytes damaged: member ' .. i .. ' of ' .. n .. ' of packed batch ' ..\n" \
	"                bseq .. ' cannot be read past the damage at member ' .. bad\n"           \
	"        end\n"                                                                            \
	"        rows[#rows + 1] = {TEXT_ID(id), now, now, '', '000', '', '', '', '', why}\n"      \
	"      end\n"                                                                              \
	"    end\n"                                                                                \
	"  end\n"                                                                                  \
	"  ADD_ROWS(rows, h[4] or '', now, h[8])\n"                                                \
	"  return #rows\n"                                                                         \
	"end\n"

#define STR_(x) #x
#define STR(x) STR_(x)

/* MP is "{P}:m:"; HP, the history lists' prefix, is "{P}:h:". NOTE adds a
 * note (already encoded) to the history of id and keeps the last few. */
#define LUA_PRELUDE                                                                                \
	"local MP = ARGV[1]\n"                                                                     \
	"local HP = string.sub(MP, 1, -3) .. 'h:'\n"                                               \
	"local function NOTE(id, note)\n"                                                          \
	"  redis.call('RPUSH', HP .. id, note)\n"                                                  \
	"  redis.call('LTRIM', HP .. id, -" STR(ACKBOX_HISTORY_MAX) ", -1)\n"                      \
	"end\n"                                                                                    \
	"local K_DUE, K_CREATED, K_ALL, K_FAILED = KEYS[2], KEYS[3], KEYS[7], KEYS[8]\n"          \
	"local K_BYTES = KEYS[9]\n"                                                               \
	"local function FORGET(k) redis.call('DECRBY', K_BYTES, redis.call('HSTRLEN', k, 'payload')) end\n" \
	"local function SK(st) return KEYS[4 + tonumber(st)] end\n"                                \
	"local F = {'state','attempts','created','updated','due','topic','key','ct','headers',"   \
	"'payload','last_error','last_code','lease','plen'}\n"                                    \
	LUA_ORDER LUA_ROWS LUA_PACKED

/* ARGV: MP, schema, version, create ('1' or '0'). Reads the meta hash, or
 * creates it if asked ('!none' if it is missing and not created); refuses
 * keys of another type. An older version of the layout is raised to this
 * one (version 1 is version 2 without batches), so that an older ackbox,
 * which would not see the batches, refuses the prefix from then on. */
static const char lua_open[] =
    "local t = redis.call('TYPE', KEYS[1])['ok']\n"
    "if t == 'hash' then\n"
    "  if redis.call('EXISTS', KEYS[9]) == 0 then\n"
    "    local sum = 0\n"
    "    for _, id in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do\n"
    "      sum = sum + redis.call('HSTRLEN', ARGV[1] .. id, 'payload')\n"
    "    end\n"
    "    redis.call('SET', KEYS[9], sum)\n"
    "  end\n"
    "  local m = redis.call('HMGET', KEYS[1], 'schema', 'version')\n"
    "  local v = tonumber(m[2] or '')\n"
    "  if m[1] == ARGV[2] and v and v >= 1 and v < tonumber(ARGV[3]) then\n"
    "    redis.call('HSET', KEYS[1], 'version', ARGV[3])\n"
    "    m[2] = ARGV[3]\n"
    "  end\n"
    "  return {m[1] or '', m[2] or ''}\n"
    "elseif t ~= 'none' then return {'!type', KEYS[1], t} end\n"
    "for i = 2, #KEYS do\n"
    "  local u = redis.call('TYPE', KEYS[i])['ok']\n"
    "  if u ~= 'none' then return {'!type', KEYS[i], u} end\n"
    "end\n"
    "if ARGV[4] ~= '1' then return {'!none', KEYS[1]} end\n"
    "redis.call('HSET', KEYS[1], 'schema', ARGV[2], 'version', ARGV[3])\n"
    "redis.call('SET', KEYS[9], 0)\n"
    "return {ARGV[2], ARGV[3]}\n";

/* ARGV: MP, n, then per record: id created due topic flags key ct headers payload,
 * then the owner. Checks every id first, so a batch is stored whole or not at all.
 * A call per message only where one is needed (its hash; per-key order); the
 * index sets, the byte count and the check take one call per ZCHUNK members:
 * a redis.call costs more than the work of a member (Redis's INFO
 * commandstats, docs/stores/redis.md). */
static const char lua_insert[] = LUA_PRELUDE
    "local n = tonumber(ARGV[2])\n"
    "local owner = ARGV[3 + n * 9]\n"
    "local seen, keys, rows = {}, {}, {}\n"
    "local function dup(id)\n"
    "  return redis.error_reply('DUPLICATE message ' .. id .. ' is already stored')\n"
    "end\n"
    "for i = 0, n - 1 do\n"
    "  local id = ARGV[3 + i * 9]\n"
    "  if seen[id] then return dup(id) end\n"
    "  seen[id] = true\n"
    "  keys[i + 1] = MP .. id\n"
    "  rows[i + 1] = {unpack(ARGV, 3 + i * 9, 11 + i * 9)}\n"
    "end\n"
    "for s = 1, n, " ZCHUNK " do\n"
    "  local e = math.min(s + " ZCHUNK " - 1, n)\n"
    "  if redis.call('EXISTS', unpack(keys, s, e)) > 0 then\n"
    "    for j = s, e do\n"
    "      if redis.call('EXISTS', keys[j]) == 1 then return dup(ARGV[3 + (j - 1) * 9]) end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "ADD_ROWS(rows, owner, nil)\n"
    "return n\n";

/* ARGV: MP, n, due (the lowest), created (the lowest), payload bytes,
 * owner, ids (16 bytes each), data (the members). A packed
 * batch (see the layout); its bseq, or -1 under per-key order (the caller
 * writes rows instead: a key's order lives in the rows). No id check: the
 * ids are new (the core makes them), and a batch's members are no keys. */
static const char lua_insert_packed[] = LUA_PRELUDE
    "if ORD then return -1 end\n"
    "local bseq = redis.call('INCR', BASE .. 'bseq')\n"
    "redis.call('HSET', BP .. bseq, 'data', ARGV[8], 'ids', ARGV[7], 'n', ARGV[2],\n"
    "           'live', ARGV[2], 'bytes', ARGV[5], 'owner', ARGV[6], 'due', ARGV[3],\n"
    "           'created', ARGV[4])\n"
    "redis.call('ZADD', K_BDUE, ARGV[3], bseq)\n"
    "redis.call('ZADD', K_BCREATED, ARGV[4], bseq)\n"
    "redis.call('INCRBY', K_BN, ARGV[2])\n"
    "redis.call('INCRBY', K_BYTES, ARGV[5])\n"
    "return bseq\n";

/* ARGV: MP, now, lease_until, limit, owner, mode ('o': ordered, from
 * {P}:ready). Due packed batches first, whole, until they hold half the
 * limit (one may overshoot it): each takes a new lease, as a row does, and
 * is handed back as {bseq, lease, n, data, ids, acked bits}; then rows up
 * to the rest of the limit. Returns {{id, fields, id, fields, ...},
 * {batch, ...}}. */
static const char lua_claim[] = LUA_PRELUDE
    "local batches, got, limit = {}, 0, tonumber(ARGV[4])\n"
    "if ARGV[6] ~= 'o' then\n"
    "  for _, b in ipairs(redis.call('ZRANGEBYSCORE', K_BDUE, '-inf', ARGV[2], 'LIMIT', 0, 16)) do\n"
    "    if got > 0 and got >= limit / 2 then break end\n"
    "    local bk = BP .. b\n"
    "    local h = redis.call('HMGET', bk, 'n', 'live', 'data', 'ids')\n"
    "    if h[1] then\n"
    "      local lease = redis.call('HINCRBY', bk, 'lease', 1)\n"
    "      redis.call('HSET', bk, 'due', ARGV[3], 'taken', ARGV[3], 'owner', ARGV[5])\n"
    "      redis.call('ZADD', K_BDUE, ARGV[3], b)\n"
    "      batches[#batches + 1] = {b, tostring(lease), h[1], h[3] or '', h[4] or '',\n"
    "                               redis.call('GET', BG .. b) or ''}\n"
    "      got = got + (tonumber(h[2]) or 0)\n"
    "    else\n"
    "      redis.call('ZREM', K_BDUE, b); redis.call('ZREM', K_BCREATED, b)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {}\n"
    "if got >= limit then return {out, batches} end\n"
    "local from = (ARGV[6] == 'o') and K_READY or K_DUE\n"
    "local ids = redis.call('ZRANGEBYSCORE', from, '-inf', ARGV[2],\n"
    "                       'LIMIT', 0, limit - got)\n"
    "for _, id in ipairs(ids) do\n"
    "  local k = MP .. id\n"
    "  if redis.call('EXISTS', k) == 1 then\n"
    "    redis.call('HINCRBY', k, 'lease', 1)\n"
    "    redis.call('HSET', k, 'due', ARGV[3], 'owner', ARGV[5])\n"
    "    redis.call('ZADD', K_DUE, ARGV[3], id)\n"
    "    if ORD then redis.call('ZADD', K_READY, 'XX', ARGV[3], id) end\n"
    "    out[#out + 1] = id\n"
    "    out[#out + 1] = redis.call('HMGET', k, unpack(F))\n"
    "  else\n"
    "    redis.call('ZREM', K_DUE, id)\n"
    "    redis.call('ZREM', K_CREATED, id)\n"
    "    if ORD then redis.call('ZREM', K_READY, id) end\n"
    "  end\n"
    "end\n"
    "return {out, batches}\n";

/* ARGV: MP, now, bseq. A claimed batch whose data does not read: its
 * members become rows now (damaged ones FAILED), due now. Returns {rows,
 * members lost}. */
static const char lua_unpack_one[] = LUA_PRELUDE
    "if redis.call('EXISTS', BP .. ARGV[3]) == 1 then\n"
    "  redis.call('HSET', BP .. ARGV[3], 'taken', ARGV[2])\n"
    "end\n"
    "return {UNPACK(ARGV[3], ARGV[2]), LOST}\n";

/*
 * ARGV: MP, now, then the holder's batches: nb, and per batch: bseq, the
 * lease it holds it under, its acked bits, live, bytes (both after this
 * call), unpack ('1': a change below needs its members as rows), k, then
 * the k ids this call acks; then the rows' changes: n, and per change: kind
 * id lease attempts due has_error error code note ('' for none).
 *
 * A batch that is gone (unpacked), or that another claim took (another
 * lease), takes its acks as rows' deletes under the lease given: rows
 * unpacked under it and untouched since, or nothing. A
 * change to a row applies only if the row exists and carries the same
 * lease; its note is added only if it applied (a NOTE change, kind 5,
 * applies to a pending row and changes nothing else). Returns {changes
 * applied, bseq gone, ...}.
 */
static const char lua_apply[] = LUA_PRELUDE
    "local now, done, gone = ARGV[2], 0, {}\n"
    "local function change(kind, id, lease, attempts, due, has_error, err, code, note)\n"
    "  local k = MP .. id\n"
    "  local cur = redis.call('HMGET', k, 'state', 'lease', 'key')\n"
    "  local st = cur[1]\n"
    "  if not st or cur[2] ~= lease then return 0 end\n"
    "  if kind == '1' then\n"
    "    FORGET(k)\n"
    "    redis.call('DEL', k, HP .. id)\n"
    "    ord_gone(id, cur[3] or nil)\n"
    "    redis.call('ZREM', K_DUE, id); redis.call('ZREM', K_CREATED, id)\n"
    "    redis.call('ZREM', SK(st), id); redis.call('ZREM', K_ALL, id)\n"
    "    redis.call('ZREM', K_FAILED, id)\n"
    "    return 1\n"
    "  end\n"
    "  if st == '2' then return 0 end\n"
    "  if kind == '2' or kind == '3' then\n"
    "    local to = (kind == '2') and '1' or '2'\n"
    "    redis.call('HSET', k, 'state', to, 'attempts', attempts, 'last_code', code,\n"
    "               'updated', now)\n"
    "    if has_error == '1' then redis.call('HSET', k, 'last_error', err)\n"
    "    else redis.call('HDEL', k, 'last_error') end\n"
    "    if st ~= to then redis.call('ZREM', SK(st), id); redis.call('ZADD', SK(to), 0, id) end\n"
    "    if kind == '2' then\n"
    "      redis.call('HSET', k, 'due', due)\n"
    "      redis.call('ZADD', K_DUE, due, id)\n"
    "      ord_due(id, cur[3] or nil, due, false)\n"
    "    else\n"
    "      redis.call('ZREM', K_DUE, id); redis.call('ZREM', K_CREATED, id)\n"
    "      redis.call('ZADD', K_FAILED, now, id)\n"
    "      ord_failed(id)\n"
    "    end\n"
    "  elseif kind == '4' then\n"
    "    redis.call('HSET', k, 'due', due)\n"
    "    redis.call('ZADD', K_DUE, due, id)\n"
    "    ord_due(id, cur[3] or nil, due, false)\n"
    "  elseif kind ~= '5' then\n"
    "    return 0\n"
    "  end\n"
    "  if note ~= '' then NOTE(id, note) end\n"
    "  return 1\n"
    "end\n"
    "local p = 4\n"
    "for _ = 1, tonumber(ARGV[3]) do\n"
    "  local bseq, lease = ARGV[p], ARGV[p + 1]\n"
    "  local live, bytes, k = ARGV[p + 3], ARGV[p + 4], tonumber(ARGV[p + 6])\n"
    "  local bk = BP .. bseq\n"
    "  local cur = redis.call('HMGET', bk, 'live', 'bytes', 'lease')\n"
    "  if cur[1] and (cur[3] or '0') == lease then\n"
    "    redis.call('DECRBY', K_BN, tonumber(cur[1]) - tonumber(live))\n"
    "    redis.call('DECRBY', K_BYTES, tonumber(cur[2]) - tonumber(bytes))\n"
    "    if live == '0' then\n"
    "      redis.call('DEL', bk, BG .. bseq)\n"
    "      redis.call('ZREM', K_BDUE, bseq); redis.call('ZREM', K_BCREATED, bseq)\n"
    "    else\n"
    "      redis.call('HSET', bk, 'live', live, 'bytes', bytes)\n"
    "      redis.call('SET', BG .. bseq, ARGV[p + 2])\n"
    "      if ARGV[p + 5] == '1' then UNPACK(bseq, now) end\n"
    "    end\n"
    "    done = done + k\n"
    "  else\n"
    "    for i = 1, k do done = done + change('1', ARGV[p + 6 + i], lease) end\n"
    "    gone[#gone + 1] = bseq\n"
    "  end\n"
    "  p = p + 7 + k\n"
    "end\n"
    "local n = tonumber(ARGV[p])\n"
    "for i = 0, n - 1 do\n"
    "  local b = p + 1 + i * 9\n"
    "  done = done + change(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4],\n"
    "                       ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8])\n"
    "end\n"
    "return {done, unpack(gone)}\n";

/* ARGV: MP, now, offset, count, what ('m': rows, 'b': packed batches).
 * Those leased into the future (due later than now), with their owners:
 * id (or bseq), owner, ... */
static const char lua_recover[] = LUA_PRELUDE
    "local z, pre = K_DUE, MP\n"
    "if ARGV[5] == 'b' then z, pre = K_BDUE, BP end\n"
    "local ids = redis.call('ZRANGEBYSCORE', z, '(' .. ARGV[2], '+inf',\n"
    "                       'LIMIT', tonumber(ARGV[3]), tonumber(ARGV[4]))\n"
    "local out = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  out[#out + 1] = id\n"
    "  out[#out + 1] = redis.call('HGET', pre .. id, 'owner') or ''\n"
    "end\n"
    "return out\n";

/* ARGV: MP, now, what ('m' or 'b', as lua_recover), then id (or bseq),
 * owner pairs: each still leased into the future and still of that owner
 * becomes due now (a batch's members with it, when it is unpacked).
 * Returns the count. */
static const char lua_take[] = LUA_PRELUDE
    "local now, n = tonumber(ARGV[2]), 0\n"
    "local z, pre = K_DUE, MP\n"
    "if ARGV[3] == 'b' then z, pre = K_BDUE, BP end\n"
    "for i = 4, #ARGV, 2 do\n"
    "  local k = pre .. ARGV[i]\n"
    "  local cur = redis.call('HMGET', k, 'owner', 'due')\n"
    "  if cur[2] and (cur[1] or '') == ARGV[i + 1] and tonumber(cur[2]) > now then\n"
    "    redis.call('HSET', k, 'due', ARGV[2])\n"
    "    if z == K_BDUE then redis.call('HSET', k, 'taken', ARGV[2]) end\n"
    "    redis.call('ZADD', z, ARGV[2], ARGV[i])\n"
    "    if ORD and z == K_DUE then redis.call('ZADD', K_READY, 'XX', ARGV[2], ARGV[i]) end\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/* A consistent snapshot: sending (rows and packed members), retrying,
 * failed, oldest created (or nil; a batch counts from its oldest member
 * until it is gone). */
static const char lua_counts[] = LUA_PRELUDE
    "local o = redis.call('ZRANGE', K_CREATED, 0, 0, 'WITHSCORES')[2]\n"
    "local ob = redis.call('ZRANGE', K_BCREATED, 0, 0, 'WITHSCORES')[2]\n"
    "if ob and (not o or tonumber(ob) < tonumber(o)) then o = ob end\n"
    "local bn = tonumber(redis.call('GET', K_BN) or '0')\n"
    "return {redis.call('ZCARD', SK(0)) + bn, redis.call('ZCARD', SK(1)),\n"
    "        redis.call('ZCARD', SK(2)), o or false}\n";

/* Rows or batches due now or later: has_pending. */
static const char lua_pending[] = LUA_PRELUDE
    "return redis.call('ZCARD', K_DUE) + redis.call('ZCARD', K_BDUE)\n";

/* ARGV: MP, now, max. Unpacks up to max batches; returns how many. */
static const char lua_unpack[] = LUA_PRELUDE
    "local bs = redis.call('ZRANGE', K_BDUE, 0, tonumber(ARGV[3]) - 1)\n"
    "for _, b in ipairs(bs) do UNPACK(b, ARGV[2]) end\n"
    "return {#bs, LOST}\n";

/* ARGV: MP. Every batch's bseq, oldest first: list and get read the batches
 * one at a time after it (batch_read), never unpacking them. */
static const char lua_batches[] = LUA_PRELUDE
    "return redis.call('ZRANGE', K_BCREATED, 0, -1)\n";

/* ARGV: MP, bseq[, id]. {n, data, ids, taken, lease, acked bits} of a
 * batch, or false if it is gone (acked or unpacked since) or, given an id
 * (16 bytes), its whole ids field does not name it. */
static const char lua_batch_read[] = LUA_PRELUDE
    "local h = redis.call('HMGET', BP .. ARGV[2], 'n', 'data', 'ids', 'taken', 'lease')\n"
    "if not h[1] then return false end\n"
    "local want, ids = ARGV[3], h[3] or ''\n"
    "if want and #want == 16 and #ids == (tonumber(h[1]) or -1) * 16 then\n"
    "  local p, hit = 1, false\n"
    "  while not hit do\n"
    "    local i = string.find(ids, want, p, true)\n"
    "    if not i then return false end\n"
    "    hit = (i - 1) % 16 == 0\n"
    "    p = i + 1\n"
    "  end\n"
    "end\n"
    "return {h[1], h[2] or '', h[3] or '', h[4] or '', h[5] or '0',\n"
    "        redis.call('GET', BG .. ARGV[2]) or ''}\n";

/* ARGV: MP, now, bseq. Unpacks that batch (force of one of its members). */
static const char lua_unpack_named[] = LUA_PRELUDE
    "local n = UNPACK(ARGV[3], ARGV[2])\n"
    "return {n, LOST}\n";

/* ARGV: MP, set ('0','1','2' or 'all'), start ('-' or '(id'), count. Returns id, fields, ... */
static const char lua_page[] = LUA_PRELUDE
    "local key = (ARGV[2] == 'all') and K_ALL or SK(ARGV[2])\n"
    "local ids = redis.call('ZRANGEBYLEX', key, ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))\n"
    "local out = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  out[#out + 1] = id\n"
    "  out[#out + 1] = redis.call('HMGET', MP .. id, unpack(F))\n"
    "end\n"
    "return out\n";

/* ARGV: MP, now, mode ('ids' or 'all'), max, ids... Returns {requeued, looked at}. */
static const char lua_requeue[] = LUA_PRELUDE
    "local ids = {}\n"
    "if ARGV[3] == 'all' then ids = redis.call('ZRANGE', SK(2), 0, tonumber(ARGV[4]) - 1)\n"
    "else for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end end\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local k = MP .. id\n"
    "  local cur = redis.call('HMGET', k, 'state', 'created', 'key')\n"
    "  if cur[1] == '2' then\n"
    "    redis.call('HSET', k, 'state', '1', 'attempts', '0', 'due', ARGV[2], 'updated', ARGV[2])\n"
    "    redis.call('ZREM', SK(2), id); redis.call('ZREM', K_FAILED, id)\n"
    "    redis.call('ZADD', SK(1), 0, id)\n"
    "    redis.call('ZADD', K_DUE, ARGV[2], id)\n"
    "    redis.call('ZADD', K_CREATED, cur[2], id)\n"
    "    ord_due(id, cur[3] or nil, ARGV[2], true)\n"
    "    n = n + 1\n"
    "  elseif ARGV[3] == 'all' then\n"
    "    redis.call('ZREM', SK(2), id)\n"
    "  end\n"
    "end\n"
    "return {n, #ids}\n";

/* ARGV: MP, older_than, max. Returns {deleted, looked at}. */
static const char lua_purge[] = LUA_PRELUDE
    "local ids = redis.call('ZRANGEBYSCORE', K_FAILED, '-inf', '(' .. ARGV[2],\n"
    "                       'LIMIT', 0, tonumber(ARGV[3]))\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local k = MP .. id\n"
    "  redis.call('ZREM', K_FAILED, id)\n"
    "  local cur = redis.call('HMGET', k, 'state', 'key')\n"
    "  if cur[1] == '2' then\n"
    "    FORGET(k)\n"
    "    redis.call('DEL', k, HP .. id)\n"
    "    redis.call('ZREM', SK(2), id); redis.call('ZREM', K_ALL, id)\n"
    "    ord_gone(id, cur[2] or nil)\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return {n, #ids}\n";

/* ARGV: MP, now, kind ('1' delete, '3' fail), id, has_error, error, code, note
 * ('' for none; FAIL only). An operator's override, whatever the state and
 * lease: FAIL takes a new lease, so a relay that holds the message can no
 * longer change it. Returns 1, or 0 if there is no such message. */
static const char lua_force[] = LUA_PRELUDE
    "local now, kind, id = ARGV[2], ARGV[3], ARGV[4]\n"
    "local k = MP .. id\n"
    "local cur = redis.call('HMGET', k, 'state', 'key')\n"
    "local st = cur[1]\n"
    "if not st then return 0 end\n"
    "redis.call('ZREM', K_DUE, id); redis.call('ZREM', K_CREATED, id)\n"
    "redis.call('ZREM', SK(st), id)\n"
    "if kind == '1' then\n"
    "  FORGET(k)\n"
    "  redis.call('DEL', k, HP .. id)\n"
    "  redis.call('ZREM', K_ALL, id); redis.call('ZREM', K_FAILED, id)\n"
    "  ord_gone(id, cur[2] or nil)\n"
    "  return 1\n"
    "end\n"
    "if ARGV[8] and ARGV[8] ~= '' then NOTE(id, ARGV[8]) end\n"
    "ord_failed(id)\n"
    "redis.call('HSET', k, 'state', '2', 'last_code', ARGV[7], 'updated', now)\n"
    "if ARGV[5] == '1' then redis.call('HSET', k, 'last_error', ARGV[6])\n"
    "else redis.call('HDEL', k, 'last_error') end\n"
    "redis.call('HINCRBY', k, 'lease', 1)\n"
    "redis.call('ZADD', SK(2), 0, id)\n"
    "redis.call('ZADD', K_FAILED, now, id)\n"
    "return 1\n";

/* ARGV: MP, now, id (as stored), reason. A claim's verdict on a message
 * whose fields are damaged: FAILED with the reason, whatever its state
 * field says (it may not parse); a missing topic becomes "" so that the
 * row can be listed. Returns 1, or 0 if there is no such message. */
static const char lua_damaged[] = LUA_PRELUDE
    "local now, id = ARGV[2], ARGV[3]\n"
    "local k = MP .. id\n"
    "if redis.call('EXISTS', k) == 0 then return 0 end\n"
    "redis.call('ZREM', K_DUE, id); redis.call('ZREM', K_CREATED, id)\n"
    "redis.call('ZREM', SK(0), id); redis.call('ZREM', SK(1), id)\n"
    "redis.call('HSET', k, 'state', '2', 'last_code', '0', 'updated', now, 'last_error', ARGV[4])\n"
    "if redis.call('HEXISTS', k, 'topic') == 0 then redis.call('HSET', k, 'topic', '') end\n"
    "redis.call('ZADD', SK(2), 0, id); redis.call('ZADD', K_ALL, 0, id)\n"
    "redis.call('ZADD', K_FAILED, now, id)\n"
    "ord_failed(id)\n"
    "return 1\n";

/* ARGV: MP, start ('-' or '(id'), max. Installs per-key order, a page of
 * ids at a time: every row joins its key's set, then, in a second pass
 * (ARGV[4] == '2'), pending heads and rows without a key join {P}:ready.
 * The last call of the second pass sets meta order = 1. Returns {looked
 * at, last id}. */
static const char lua_order_build[] = LUA_PRELUDE
    "local ids = redis.call('ZRANGEBYLEX', K_ALL, ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "for _, id in ipairs(ids) do\n"
    "  local f = redis.call('HMGET', MP .. id, 'state', 'due', 'key')\n"
    "  if f[1] then\n"
    "    if ARGV[4] == '1' then\n"
    "      if f[3] then redis.call('ZADD', KP .. f[3], 0, id) end\n"
    "    elseif f[1] ~= '2' and (not f[3] or ord_first(f[3]) == id) then\n"
    "      redis.call('ZADD', K_READY, f[2], id)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[4] == '2' and #ids < tonumber(ARGV[3]) then\n"
    "  redis.call('HSET', KEYS[1], 'order', '1')\n"
    "end\n"
    "return {#ids, ids[#ids] or ''}\n";

/* ARGV: MP, max. Keys whose head is FAILED: {id, key, waiting, ...}. */
static const char lua_blocked[] = LUA_PRELUDE
    "local out = {}\n"
    "if not ORD then return out end\n"
    "for _, id in ipairs(redis.call('ZRANGE', SK(2), 0, -1)) do\n"
    "  local key = redis.call('HGET', MP .. id, 'key')\n"
    "  if key and ord_first(key) == id then\n"
    "    out[#out + 1] = id\n"
    "    out[#out + 1] = key\n"
    "    out[#out + 1] = redis.call('ZCARD', KP .. key) - 1\n"
    "    if #out >= 3 * tonumber(ARGV[2]) then break end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* Messages in every state and their payload bytes (the backlog bound). */
static const char lua_usage[] = LUA_PRELUDE
    "return {redis.call('ZCARD', K_ALL) + tonumber(redis.call('GET', K_BN) or '0'),\n"
    "        tonumber(redis.call('GET', K_BYTES) or '0')}\n";

enum { SC_OPEN, SC_INSERT, SC_CLAIM, SC_APPLY, SC_RECOVER, SC_COUNTS, SC_PAGE, SC_REQUEUE,
       SC_PURGE, SC_FORCE, SC_TAKE, SC_DAMAGED, SC_USAGE, SC_ORDER_BUILD, SC_BLOCKED,
       SC_INSERT_PACKED, SC_PENDING, SC_UNPACK, SC_UNPACK_ONE, SC_BATCHES, SC_BATCH_READ,
       SC_UNPACK_NAMED, SC_COUNT };
static const char *const scripts[SC_COUNT] = {
    [SC_OPEN] = lua_open,       [SC_INSERT] = lua_insert,   [SC_CLAIM] = lua_claim,
    [SC_APPLY] = lua_apply,     [SC_RECOVER] = lua_recover, [SC_COUNTS] = lua_counts,
    [SC_PAGE] = lua_page,       [SC_REQUEUE] = lua_requeue, [SC_PURGE] = lua_purge,
    [SC_FORCE] = lua_force,     [SC_TAKE] = lua_take,       [SC_DAMAGED] = lua_damaged,
    [SC_USAGE] = lua_usage,     [SC_ORDER_BUILD] = lua_order_build, [SC_BLOCKED] = lua_blocked,
    [SC_INSERT_PACKED] = lua_insert_packed, [SC_PENDING] = lua_pending, [SC_UNPACK] = lua_unpack,
    [SC_UNPACK_ONE] = lua_unpack_one, [SC_BATCHES] = lua_batches,
    [SC_BATCH_READ] = lua_batch_read, [SC_UNPACK_NAMED] = lua_unpack_named,
};

typedef struct rd_ctx {
	redisContext *rc;       /* NULL while disconnected; the next call reconnects */
	char *host;
	int port;
	int db;
	char *user;             /* NULL: AUTH with the password only */
	char *password;         /* NULL: no AUTH */
	char *keys[K_COUNT];    /* "{P}:due", ... */
	char *msg_prefix;       /* "{P}:m:" */
	char where[512];        /* "redis 127.0.0.1:6379/0 prefix 'ackbox'" for messages */
	struct timeval connect_tv, cmd_tv;
	int64_t cmd_ms;
	char sha[SC_COUNT][41];
	const ackbox_conf *conf; /* for logging; outlives the store (the handle owns it) */
	int ordered;            /* delivery.order=key: claims from {P}:ready */
	int absent; /* no {P}:meta yet (store.create=insert): the first insert writes it */
	char owner[256]; /* this handle, as messages name their relay (owner_name) */
	/* the packed batches this handle inserted and still holds members of,
	 * and the map of those members: id -> batch, index */
	struct rd_batch *batches;
	ackbox_idmap map; /* a member's id -> (its rd_batch, its index) */
} rd_ctx;

/* A packed batch this handle inserted (see the layout). */
typedef struct rd_batch {
	struct rd_batch *prev, *next;
	char bseq[24];
	uint64_t lease;        /* the batch's lease this handle holds it under (0: inserted) */
	uint32_t n, live;      /* members; those not yet acked */
	uint64_t bytes;        /* the payload bytes of those */
	uint32_t k;            /* acks of it in the apply being built */
	int touched, unpack;   /* in the apply being built */
	ackbox_id *ids;        /* n */
	uint32_t *plen;        /* n */
	uint8_t gone[];        /* a bit per member, LSB first: acked */
} rd_batch;

static const ackbox_prop rd_props[] = {
	{"connect_timeout", ACKBOX_PROP_DURATION, "5s", 1, 600000, NULL,
	 "How long to wait for the TCP connection, AUTH and SELECT when (re)connecting."},
	{"timeout", ACKBOX_PROP_DURATION, "30s", 1, 3600000, NULL,
	 "How long to wait for one reply; then the call fails and the connection is dropped."},
	{"require_fsync", ACKBOX_PROP_BOOL, "false", 0, 0, NULL,
	 "Refuse to open unless the server has appendonly yes and appendfsync always "
	 "(read with CONFIG GET)."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

/* ------------------------------------------------------------------ */
/* Argument vectors                                                     */
/* ------------------------------------------------------------------ */

/* An argv for redisCommandArgv. Numbers are formatted into slots sized up
 * front, so their pointers stay valid until the command is sent. */
typedef struct args {
	const char **v;
	size_t *len;
	size_t n, cap;
	char (*num)[24];
	size_t nnum, capnum;
} args;

static int args_init(args *a, size_t cap, size_t capnum)
{
	memset(a, 0, sizeof(*a));
	a->v = malloc(cap * sizeof(*a->v));
	a->len = malloc(cap * sizeof(*a->len));
	a->num = malloc((capnum ? capnum : 1) * sizeof(*a->num));
	a->cap = cap;
	a->capnum = capnum;
	if (!a->v || !a->len || !a->num) {
		free(a->v);
		free(a->len);
		free(a->num);
		return ACKBOX_ERR_NOMEM;
	}
	return 0;
}

static void args_fini(args *a)
{
	free(a->v);
	free(a->len);
	free(a->num);
}

static void args_bin(args *a, const void *p, size_t len)
{
	/* sized by the caller: overflowing is a bug, not a runtime condition */
	if (a->n >= a->cap)
		abort();
	a->v[a->n] = len ? p : "";
	a->len[a->n++] = len;
}

static void args_str(args *a, const char *s)
{
	args_bin(a, s, strlen(s));
}

static void args_i64(args *a, int64_t x)
{
	if (a->nnum >= a->capnum)
		abort();
	snprintf(a->num[a->nnum], sizeof(a->num[0]), "%" PRId64, x);
	args_str(a, a->num[a->nnum++]);
}

static void args_u64(args *a, uint64_t x)
{
	if (a->nnum >= a->capnum)
		abort();
	snprintf(a->num[a->nnum], sizeof(a->num[0]), "%" PRIu64, x);
	args_str(a, a->num[a->nnum++]);
}

/* EVALSHA <sha> 9 <keys> <MP>: the head every script call starts with. */
#define NKEYS_TEXT "9"
_Static_assert(K_COUNT == 9, "NKEYS_TEXT must say how many keys a script gets");
static void args_script(rd_ctx *c, args *a, int which)
{
	args_str(a, "EVALSHA");
	args_str(a, c->sha[which]);
	args_str(a, NKEYS_TEXT);
	for (int k = 0; k < K_COUNT; k++)
		args_str(a, c->keys[k]);
	args_str(a, c->msg_prefix);
}
#define SCRIPT_HEAD (3 + K_COUNT + 1)

/* ------------------------------------------------------------------ */
/* Connection and errors                                                */
/* ------------------------------------------------------------------ */

static int starts(const char *s, const char *p)
{
	return s && strncmp(s, p, strlen(p)) == 0;
}

/* A connection-level failure: the context is unusable afterwards, so it is
 * dropped and the next call reconnects. */
static int io_error(rd_ctx *c, const char *what, char *errstr, size_t errstr_size)
{
	const char *msg = c->rc ? c->rc->errstr : "not connected";
	if (c->rc && c->rc->err == REDIS_ERR_IO &&
	    (strstr(msg, "temporarily unavailable") || strstr(msg, "timed out")))
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: %s failed: no reply within %" PRId64 " ms (redis.timeout); "
		                  "the connection was dropped",
		                  c->where, what, c->cmd_ms);
	else
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: %s failed: connection lost (%s); it may or may not have been "
		                  "applied",
		                  c->where, what, msg);
	if (c->rc) {
		redisFree(c->rc);
		c->rc = NULL;
	}
	return ACKBOX_ERR_STORE;
}

/* An error reply from the server, mapped to an ackbox code with a hint. */
static int reply_error(rd_ctx *c, const redisReply *r, const char *what, char *errstr,
                       size_t errstr_size)
{
	const char *m = r->str ? r->str : "";
	const char *hint = "";
	int code = ACKBOX_ERR_STORE;
	if (starts(m, "OOM")) {
		code = ACKBOX_ERR_STORE_FULL;
		hint = " (redis reached maxmemory: give it more memory; ackbox needs "
		       "maxmemory-policy noeviction)";
	} else if (starts(m, "MISCONF") && strstr(m, "No space")) {
		code = ACKBOX_ERR_STORE_FULL;
		hint = " (the redis server's disk is full)";
	} else if (starts(m, "MISCONF")) {
		hint = " (redis cannot write its persistence files: check its disk and log)";
	} else if (starts(m, "READONLY")) {
		code = ACKBOX_ERR_STORE_READONLY;
		hint = " (this server is a read-only replica: point store.url at the primary)";
	} else if (starts(m, "WRONGTYPE")) {
		code = ACKBOX_ERR_STORE_SCHEMA;
		hint = " (a key under this prefix is not ackbox's: choose another ?prefix=)";
	} else if (starts(m, "NOAUTH") || starts(m, "WRONGPASS")) {
		hint = " (give user:password or :password in store.url)";
	} else if (starts(m, "NOPERM")) {
		hint = " (the ACL user needs EVAL, EVALSHA, SCRIPT, CONFIG GET and the hash and "
		       "sorted-set commands on the keys of this prefix)";
	} else if (starts(m, "LOADING")) {
		hint = " (redis is still loading its data after a restart)";
	} else if (starts(m, "BUSY")) {
		hint = " (a long-running script blocks the server)";
	}
	ackbox_errstr_set(errstr, errstr_size, "%s: %s failed: %s%s", c->where, what, m, hint);
	return code;
}

/* Runs one command; on success *out is a non-error reply the caller frees. */
static int command(rd_ctx *c, args *a, const char *what, redisReply **out, char *errstr,
                   size_t errstr_size)
{
	redisReply *r = redisCommandArgv(c->rc, (int)a->n, a->v, a->len);
	*out = NULL;
	if (!r)
		return io_error(c, what, errstr, errstr_size);
	if (r->type == REDIS_REPLY_ERROR) {
		int rc = reply_error(c, r, what, errstr, errstr_size);
		freeReplyObject(r);
		return rc;
	}
	*out = r;
	return 0;
}

/* EVALSHA, and EVAL once if the server forgot the script (a restart or
 * SCRIPT FLUSH): the script is then cached again. a starts with args_script. */
static int run_script(rd_ctx *c, args *a, int which, const char *what, redisReply **out,
                      char *errstr, size_t errstr_size)
{
	redisReply *r = redisCommandArgv(c->rc, (int)a->n, a->v, a->len);
	*out = NULL;
	if (r && r->type == REDIS_REPLY_ERROR && starts(r->str, "NOSCRIPT")) {
		freeReplyObject(r);
		a->v[0] = "EVAL";
		a->len[0] = 4;
		a->v[1] = scripts[which];
		a->len[1] = strlen(scripts[which]);
		r = redisCommandArgv(c->rc, (int)a->n, a->v, a->len);
	}
	if (!r)
		return io_error(c, what, errstr, errstr_size);
	if (r->type == REDIS_REPLY_ERROR) {
		int rc = reply_error(c, r, what, errstr, errstr_size);
		freeReplyObject(r);
		return rc;
	}
	*out = r;
	return 0;
}

/* A simple command from NUL-terminated words. */
static int simple(rd_ctx *c, const char *what, redisReply **out, char *errstr,
                  size_t errstr_size, int argc, const char **argv)
{
	args a;
	int rc = args_init(&a, (size_t)argc, 0);
	if (rc)
		return rc;
	for (int i = 0; i < argc; i++)
		args_str(&a, argv[i]);
	rc = command(c, &a, what, out, errstr, errstr_size);
	args_fini(&a);
	return rc;
}

static int connect_now(rd_ctx *c, char *errstr, size_t errstr_size)
{
	redisReply *r;
	int rc;
	c->rc = redisConnectWithTimeout(c->host, c->port, c->connect_tv);
	if (!c->rc)
		return ACKBOX_ERR_NOMEM;
	if (c->rc->err) {
		ackbox_errstr_set(errstr, errstr_size, "cannot connect to redis at %s:%d: %s", c->host,
		                  c->port, c->rc->errstr);
		redisFree(c->rc);
		c->rc = NULL;
		return ACKBOX_ERR_STORE;
	}
	redisSetTimeout(c->rc, c->connect_tv);
	redisEnableKeepAlive(c->rc);
	if (c->password) {
		const char *av[3] = {"AUTH", c->user ? c->user : c->password, c->password};
		rc = simple(c, "AUTH", &r, errstr, errstr_size, c->user ? 3 : 2, av);
		if (rc)
			goto fail;
		freeReplyObject(r);
	}
	if (c->db) {
		char db[16];
		const char *av[2] = {"SELECT", db};
		snprintf(db, sizeof(db), "%d", c->db);
		rc = simple(c, "SELECT", &r, errstr, errstr_size, 2, av);
		if (rc)
			goto fail;
		freeReplyObject(r);
	}
	redisSetTimeout(c->rc, c->cmd_tv);
	return 0;
fail:
	/* connected but not usable: the next call must not take it as ready */
	if (c->rc) {
		redisFree(c->rc);
		c->rc = NULL;
	}
	return rc;
}

/*
 * Makes sure there is a usable connection: reconnects after an error, and
 * when the server closed the socket while we were idle (a restart). Nothing
 * is unsolicited in RESP2, so a readable idle socket means EOF or an error.
 * One attempt per call: retrying is the core's business.
 */
static int ready(rd_ctx *c, char *errstr, size_t errstr_size)
{
	if (c->rc) {
		struct pollfd p = {.fd = c->rc->fd, .events = POLLIN};
		if (c->rc->err || poll(&p, 1, 0) != 0) {
			redisFree(c->rc);
			c->rc = NULL;
		}
	}
	return c->rc ? 0 : connect_now(c, errstr, errstr_size);
}

/* ------------------------------------------------------------------ */
/* Rows                                                                 */
/* ------------------------------------------------------------------ */

static int64_t num(const redisReply *r)
{
	if (!r)
		return 0;
	if (r->type == REDIS_REPLY_INTEGER)
		return r->integer;
	if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
		return strtoll(r->str, NULL, 10);
	return 0;
}

static int is_str(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_STRING;
}

/* Fills row from an id and its HMGET fields. 1 if the row is gone, 0 if
 * filled, ACKBOX_ERR_STORE_CORRUPT (errstr set) for bytes it cannot trust. */
static int read_row(rd_ctx *c, const redisReply *idr, const redisReply *f, ackbox_store_row *row,
                    char *errstr, size_t errstr_size)
{
	const redisReply *const *e;
	memset(row, 0, sizeof(*row));
	if (!is_str(idr) || !f || f->type != REDIS_REPLY_ARRAY || f->elements != F_COUNT) {
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply shape for a row",
		                  c->where);
		return ACKBOX_ERR_STORE_CORRUPT;
	}
	e = (const redisReply *const *)f->element;
	if (!is_str(e[F_STATE]) && !is_str(e[F_TOPIC]) && !is_str(e[F_PAYLOAD]))
		return 1; /* no such hash (any more) */
	{
		const char *what = NULL;
		if (ackbox_id_parse(idr->str, &row->id) != 0)
			what = "the id does not parse";
		else if (!is_str(e[F_STATE]))
			what = "no state";
		else if (e[F_STATE]->len != 1 || e[F_STATE]->str[0] < '0' || e[F_STATE]->str[0] > '2')
			what = "the state does not parse";
		else if (!is_str(e[F_TOPIC]))
			what = "no topic";
		if (what) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "stored bytes damaged: %s (message '%.64s' in %s)", what,
			                  idr->str, c->where);
			return ACKBOX_ERR_STORE_CORRUPT;
		}
	}
	row->state = (ackbox_state)(e[F_STATE]->str[0] - '0');
	row->attempts = (int)num(e[F_ATTEMPTS]);
	row->created_ms = num(e[F_CREATED]);
	row->updated_ms = num(e[F_UPDATED]);
	row->due_ms = num(e[F_DUE]);
	row->topic = e[F_TOPIC]->str;
	if (is_str(e[F_KEY]) && e[F_KEY]->len) {
		row->key = e[F_KEY]->str;
		row->key_len = e[F_KEY]->len;
	}
	row->content_type = is_str(e[F_CT]) ? e[F_CT]->str : NULL;
	if (is_str(e[F_HEADERS]) && e[F_HEADERS]->len) {
		row->headers = e[F_HEADERS]->str;
		row->headers_len = e[F_HEADERS]->len;
	}
	if (is_str(e[F_PAYLOAD])) {
		row->payload = e[F_PAYLOAD]->str;
		row->payload_len = e[F_PAYLOAD]->len;
	} else {
		row->payload = "";
	}
	row->last_error = is_str(e[F_LAST_ERROR]) ? e[F_LAST_ERROR]->str : NULL;
	row->last_code = (int)num(e[F_LAST_CODE]);
	row->lease = is_str(e[F_LEASE]) ? strtoull(e[F_LEASE]->str, NULL, 10) : 0;
	return 0;
}

/* Whether a row that parsed is damaged all the same: its payload is not as
 * long as when it was written (plen; rows from before plen have none). */
static int payload_damaged(const redisReply *f, const ackbox_store_row *row, char *why,
                           size_t why_size)
{
	const redisReply *pl = f->element[F_PLEN];
	long long want;
	if (!is_str(pl))
		return 0;
	want = strtoll(pl->str, NULL, 10);
	if (want == (long long)row->payload_len)
		return 0;
	snprintf(why, why_size,
	         "stored bytes damaged: the payload is %zu bytes, %lld were stored (%s)",
	         row->payload_len, want,
	         (long long)row->payload_len < want ? "truncated" : "longer than written");
	return 1;
}

/*
 * A claim found the message whose id is idtext damaged: FAILED with why,
 * logged once. The store does this itself, as the core can only be handed
 * rows it can trust, and it has no outcome for "the store's bytes are bad".
 */
static void fail_damaged(rd_ctx *c, const char *idtext, const char *why)
{
	args a;
	redisReply *r = NULL;
	char err[256];
	if (args_init(&a, SCRIPT_HEAD + 3, 1) != 0)
		return; /* out of memory: skipped this time, failed by a later claim */
	args_script(c, &a, SC_DAMAGED);
	args_i64(&a, ackbox_wall_ms());
	args_str(&a, idtext);
	args_str(&a, why);
	if (run_script(c, &a, SC_DAMAGED, "failing a damaged message", &r, err, sizeof(err)) == 0)
		ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "redis", "%s: message '%.64s' FAILED: %s",
		                 c->where, idtext, why);
	else
		ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "redis",
		                 "%s: message '%.64s' is damaged (%s) and could not be failed: %s",
		                 c->where, idtext, why, err);
	args_fini(&a);
	if (r)
		freeReplyObject(r);
}

/* Walks an "id, fields, id, fields" reply. Returns rows passed to cb, or an
 * error; *consumed is the number of pairs looked at, *stop whether cb asked
 * to stop. A damaged row fails the walk, unless fail_damaged_rows (a claim):
 * then it is FAILED (fail_damaged()) and skipped, so that one bad hash can
 * stop no claim. */
static int walk_rows(rd_ctx *c, const redisReply *r, ackbox_store_row_cb cb, void *opaque,
                     int fail_damaged_rows, size_t *consumed, int *stop, char *errstr,
                     size_t errstr_size)
{
	int n = 0;
	size_t i;
	*consumed = 0;
	*stop = 0;
	if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply to a row query", c->where);
		return ACKBOX_ERR_STORE;
	}
	for (i = 0; i < r->elements; i += 2) {
		ackbox_store_row row;
		char why[256];
		int rc = read_row(c, r->element[i], r->element[i + 1], &row,
		                  fail_damaged_rows ? why : errstr,
		                  fail_damaged_rows ? sizeof(why) : errstr_size);
		if (rc < 0 && fail_damaged_rows && is_str(r->element[i])) {
			fail_damaged(c, r->element[i]->str, why);
			continue;
		}
		if (rc < 0)
			return rc;
		if (rc == 1)
			continue;
		if (fail_damaged_rows && payload_damaged(r->element[i + 1], &row, why, sizeof(why))) {
			fail_damaged(c, r->element[i]->str, why);
			continue;
		}
		n++;
		if (cb(&row, opaque)) {
			*stop = 1;
			i += 2;
			break;
		}
	}
	*consumed = i / 2;
	return n;
}

/* ------------------------------------------------------------------ */
/* Owners: which relay holds a message                                  */
/* ------------------------------------------------------------------ */

/* The first line of a small file, without its newline; "" if unreadable. */
static void first_line(const char *path, char *out, size_t n)
{
	FILE *f = fopen(path, "re");
	out[0] = '\0';
	if (!f)
		return;
	if (!fgets(out, (int)n, f))
		out[0] = '\0';
	out[strcspn(out, "\n")] = '\0';
	fclose(f);
}

/* The start time of process pid (clock ticks after boot): 0, or -1 if
 * there is no such process or it has ended (a zombie). */
static int proc_start(long long pid, long long *start)
{
	char path[64], buf[1024], *p, state;
	int field;
	snprintf(path, sizeof(path), "/proc/%lld/stat", pid);
	first_line(path, buf, sizeof(buf));
	p = strrchr(buf, ')'); /* the command name may hold anything */
	if (!p || sscanf(p + 1, " %c", &state) != 1 || state == 'Z' || state == 'X')
		return -1;
	for (field = 3, p++; field < 22 && p; field++)
		p = strchr(p + 1, ' ');
	return p && sscanf(p, " %lld", start) == 1 ? 0 : -1;
}

/* host|boot id|pid namespace|pid|start|handle: what names a relay */
static void process_name(char *out, size_t n, long long *pid)
{
	char host[128] = "", boot[64], ns[64] = "";
	long long start = -1;
	ssize_t l;
	*pid = (long long)getpid();
	gethostname(host, sizeof(host) - 1);
	first_line("/proc/sys/kernel/random/boot_id", boot, sizeof(boot));
	l = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
	ns[l > 0 ? l : 0] = '\0';
	proc_start(*pid, &start);
	snprintf(out, n, "%s|%s|%s|%lld|%lld", host, boot, ns, *pid, start);
}

static void owner_name(rd_ctx *c)
{
	static atomic_uint handles;
	char proc[224];
	long long pid;
	process_name(proc, sizeof(proc), &pid);
	snprintf(c->owner, sizeof(c->owner), "%s|%u", proc, atomic_fetch_add(&handles, 1) + 1);
}

/*
 * Whether recovery may take a message whose owner is `o`: one of this
 * handle, of no owner (an older ackbox), or of a process that is gone (on
 * this host: no such process, another start time, an earlier boot). A
 * live process's, another handle's in this one, and one on another host
 * or in another pid namespace (it cannot be checked) are left alone.
 */
static int owner_gone(const rd_ctx *c, const char *o)
{
	struct {
		char host[128], boot[64], ns[64];
		long long pid, start;
	} me, it;
	char mine[224];
	long long pid, start;
	if (!o[0] || strcmp(o, c->owner) == 0)
		return 1;
	process_name(mine, sizeof(mine), &pid);
	if (sscanf(mine, "%127[^|]|%63[^|]|%63[^|]|%lld|%lld", me.host, me.boot, me.ns, &me.pid,
	           &me.start) != 5 ||
	    sscanf(o, "%127[^|]|%63[^|]|%63[^|]|%lld|%lld|", it.host, it.boot, it.ns, &it.pid,
	           &it.start) != 5)
		return 0; /* no /proc here or there: not ours to judge */
	if (strcmp(me.host, it.host) != 0)
		return 0; /* another host */
	if (strcmp(me.boot, it.boot) != 0)
		return 1; /* this host rebooted since */
	if (strcmp(me.ns, it.ns) != 0)
		return 0; /* another pid namespace */
	return proc_start(it.pid, &start) != 0 || start != it.start;
}

/* ------------------------------------------------------------------ */
/* The packed batches this handle holds                                 */
/* ------------------------------------------------------------------ */

/* The id map is ackbox/idmap.h's. */
#define map_find(c, id) ackbox_idmap_find(&(c)->map, (id))
#define map_reserve(c, more) ackbox_idmap_reserve(&(c)->map, (more))
#define map_put(c, id, b, idx) ackbox_idmap_put(&(c)->map, (id), (b), (idx))
#define map_del(c, sl) ackbox_idmap_del(&(c)->map, (sl))

static int gone_bit(const rd_batch *b, uint32_t idx)
{
	return (b->gone[idx / 8] >> (idx % 8)) & 1;
}

/* Forgets a batch: this handle no longer holds any of its members as packed
 * (all acked, unpacked, or gone from the store). */
static void batch_drop(rd_ctx *c, rd_batch *b)
{
	for (uint32_t i = 0; i < b->n; i++) {
		ackbox_idmap_slot *sl;
		if (gone_bit(b, i))
			continue;
		sl = map_find(c, &b->ids[i]);
		if (sl && sl->owner == b)
			map_del(c, sl);
	}
	if (b->prev)
		b->prev->next = b->next;
	else
		c->batches = b->next;
	if (b->next)
		b->next->prev = b->prev;
	free(b->ids);
	free(b->plen);
	free(b);
}

static void batch_drop_named(rd_ctx *c, const char *bseq)
{
	for (rd_batch *b = c->batches; b; b = b->next) {
		if (strcmp(b->bseq, bseq) == 0) {
			batch_drop(c, b);
			return;
		}
	}
}

static void batches_free(rd_ctx *c)
{
	while (c->batches)
		batch_drop(c, c->batches);
	ackbox_idmap_free(&c->map);
}

/* A MessagePack str, its header as short as the length allows (any bytes:
 * the server's cmsgpack reads them back as a string). At most 5 + len. */
static char *mp_str(char *p, const void *v, size_t len)
{
	if (len < 32) {
		*p++ = (char)(0xa0 | len);
	} else if (len < 256) {
		*p++ = (char)0xd9;
		*p++ = (char)len;
	} else if (len < 65536) {
		*p++ = (char)0xda;
		*p++ = (char)(len >> 8);
		*p++ = (char)len;
	} else {
		*p++ = (char)0xdb;
		*p++ = (char)(len >> 24);
		*p++ = (char)(len >> 16);
		*p++ = (char)(len >> 8);
		*p++ = (char)len;
	}
	if (len)
		memcpy(p, v, len);
	return p + len;
}

static char *mp_i64(char *p, int64_t x)
{
	char t[24];
	int l = snprintf(t, sizeof(t), "%" PRId64, x);
	return mp_str(p, t, (size_t)l);
}

/* ------------------------------------------------------------------ */
/* Open and close                                                       */
/* ------------------------------------------------------------------ */

static void rd_close(void *vctx)
{
	rd_ctx *c = vctx;
	batches_free(c);
	if (c->rc)
		redisFree(c->rc);
	free(c->host);
	free(c->user);
	free(c->password);
	for (int k = 0; k < K_COUNT; k++)
		free(c->keys[k]);
	free(c->msg_prefix);
	memset(c, 0, sizeof(*c));
}

static void set_tv(struct timeval *tv, int64_t ms)
{
	tv->tv_sec = (time_t)(ms / 1000);
	tv->tv_usec = (suseconds_t)((ms % 1000) * 1000);
}

static int64_t conf_ms(const ackbox_conf *conf, const char *key, int64_t def)
{
	const char *v = ackbox_conf_get(conf, key);
	int64_t ms = def;
	if (v && ackbox_parse_duration_ms(v, &ms) != 0)
		ms = def;
	return ms;
}

/* redis://[user:password@]host[:port][/db][?prefix=NAME] */
static int parse_url(rd_ctx *c, const ackbox_url *url, char *errstr, size_t errstr_size)
{
	static const char *const known[] = {"prefix", NULL};
	char prefix[256] = "ackbox";

	if (ackbox_url_query_check(url, "store.url", known, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	if (ackbox_url_query_get(url, "prefix", prefix, sizeof(prefix)) &&
	    (!prefix[0] || strlen(prefix) > 100 ||
	     prefix[strspn(prefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                           "0123456789_.:-")] != '\0')) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url: prefix '%s' must be 1 to 100 of A-Z a-z 0-9 _ . : -",
		                  prefix);
		return ACKBOX_ERR_BAD_URL;
	}
	if (strchr(url->hosts, ',')) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url: one redis server only (got '%s'); ackbox does not speak "
		                  "the cluster or sentinel protocols",
		                  url->hosts);
		return ACKBOX_ERR_BAD_URL;
	}
	c->db = 0;
	if (url->path[0] && strcmp(url->path, "/") != 0) {
		char *end;
		long db = strtol(url->path + 1, &end, 10);
		if (*end || end == url->path + 1 || db < 0 || db > 1000000) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "store.url: the path must be a database number (/0, /1, ...), "
			                  "not '%s'",
			                  url->path);
			return ACKBOX_ERR_BAD_URL;
		}
		c->db = (int)db;
	}
	if (url->user && !url->password) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url: write redis://user:password@host or "
		                  "redis://:password@host");
		return ACKBOX_ERR_BAD_URL;
	}
	c->host = strdup(url->host[0] ? url->host : "127.0.0.1");
	c->port = url->port ? url->port : 6379;
	c->user = url->user && url->user[0] ? strdup(url->user) : NULL;
	c->password = url->password ? strdup(url->password) : NULL;
	if (!c->host || (url->password && !c->password) ||
	    (url->user && url->user[0] && !c->user))
		return ACKBOX_ERR_NOMEM;
	for (int k = 0; k < K_COUNT; k++) {
		if (asprintf(&c->keys[k], "{%s}:%s", prefix, key_suffix[k]) < 0) {
			c->keys[k] = NULL;
			return ACKBOX_ERR_NOMEM;
		}
	}
	if (asprintf(&c->msg_prefix, "{%s}:m:", prefix) < 0) {
		c->msg_prefix = NULL;
		return ACKBOX_ERR_NOMEM;
	}
	snprintf(c->where, sizeof(c->where), "redis %s:%d/%d prefix '%s'", c->host, c->port, c->db,
	         prefix);
	return 0;
}

/* The value of CONFIG GET name into out; 0, or an error (errstr set). */
static int config_get(rd_ctx *c, const char *name, char *out, size_t out_size, char *errstr,
                      size_t errstr_size)
{
	const char *av[3] = {"CONFIG", "GET", name};
	redisReply *r;
	int rc = simple(c, "CONFIG GET", &r, errstr, errstr_size, 3, av);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !is_str(r->element[1])) {
		ackbox_errstr_set(errstr, errstr_size, "%s: CONFIG GET %s: no such setting", c->where,
		                  name);
		freeReplyObject(r);
		return ACKBOX_ERR_STORE;
	}
	snprintf(out, out_size, "%s", r->element[1]->str);
	freeReplyObject(r);
	return 0;
}

/*
 * An acknowledged insert is only as durable as the server's AOF policy.
 * Reads appendonly and appendfsync; warns (or, with redis.require_fsync,
 * refuses) when they do not give what store.sync promises.
 */
static int check_durability(rd_ctx *c, const ackbox_conf *conf, ackbox_sync sync, char *errstr,
                            size_t errstr_size)
{
	char aof[32] = "", fsync_policy[32] = "", err[512] = "";
	const char *req = ackbox_conf_get(conf, "redis.require_fsync");
	int require = 0, rc;
	const char *meaning;

	if (req)
		ackbox_parse_bool(req, &require);
	rc = config_get(c, "appendonly", aof, sizeof(aof), err, sizeof(err));
	if (rc == 0)
		rc = config_get(c, "appendfsync", fsync_policy, sizeof(fsync_policy), err, sizeof(err));
	if (rc) {
		if (!c->rc || require) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s; redis.require_fsync=true needs CONFIG GET to check "
			                  "appendonly and appendfsync",
			                  err);
			return rc;
		}
		ackbox_store_log(conf, ACKBOX_LOG_WARN, "redis",
		        "cannot check the durability of %s (%s): make sure it runs with appendonly "
		        "yes and appendfsync always, or acknowledged publishes can be lost",
		        c->where, err);
		return 0;
	}
	if (strcmp(aof, "yes") == 0 && strcmp(fsync_policy, "always") == 0)
		return 0;
	if (strcmp(aof, "yes") != 0)
		meaning = "publishes are acknowledged before they are written to any file, so a "
		          "crash or restart of redis loses every message since its last RDB "
		          "snapshot";
	else if (strcmp(fsync_policy, "everysec") == 0)
		meaning = "publishes are acknowledged before they are fsync'd, so a crash of the "
		          "redis host (power loss, kernel panic) can lose about the last second of "
		          "acknowledged publishes";
	else
		meaning = "publishes are acknowledged before they are fsync'd and the OS flushes "
		          "when it likes, so a crash of the redis host can lose tens of seconds of "
		          "acknowledged publishes";
	if (require) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s has appendonly %s and appendfsync %s: %s; refusing to open "
		                  "because redis.require_fsync=true (set appendonly yes and "
		                  "appendfsync always on the server)",
		                  c->where, aof, fsync_policy, meaning);
		return ACKBOX_ERR_STORE;
	}
	/* store.sync=normal promises less than a power-loss guarantee: an AOF
	 * with everysec keeps it; store.sync=off promises nothing. */
	if (sync == ACKBOX_SYNC_FULL || (sync == ACKBOX_SYNC_NORMAL && strcmp(aof, "yes") != 0))
		ackbox_store_log(conf, ACKBOX_LOG_WARN, "redis",
		        "%s has appendonly %s and appendfsync %s: %s. Set appendonly yes and "
		        "appendfsync always on the server, or redis.require_fsync=true to refuse "
		        "such a server",
		        c->where, aof, fsync_policy, meaning);
	return 0;
}

static int load_scripts(rd_ctx *c, char *errstr, size_t errstr_size)
{
	for (int i = 0; i < SC_COUNT; i++) {
		const char *av[3] = {"SCRIPT", "LOAD", scripts[i]};
		redisReply *r;
		int rc = simple(c, "SCRIPT LOAD", &r, errstr, errstr_size, 3, av);
		if (rc)
			return rc;
		if (!is_str(r) || r->len != 40) {
			ackbox_errstr_set(errstr, errstr_size, "%s: SCRIPT LOAD: unexpected reply",
			                  c->where);
			freeReplyObject(r);
			return ACKBOX_ERR_STORE;
		}
		memcpy(c->sha[i], r->str, 41);
		freeReplyObject(r);
	}
	return 0;
}

/*
 * Checks {P}:meta, creating it if `create`; refuses a foreign layout or a
 * newer version. Returns 1 if it is missing and was not created.
 */
static int check_schema(rd_ctx *c, int create, char *errstr, size_t errstr_size)
{
	args a;
	redisReply *r;
	char ver[8];
	int rc = args_init(&a, SCRIPT_HEAD + 3, 1);
	if (rc)
		return rc;
	args_script(c, &a, SC_OPEN);
	args_str(&a, SCHEMA_NAME);
	snprintf(ver, sizeof(ver), "%d", SCHEMA_VERSION);
	args_str(&a, ver);
	args_str(&a, create ? "1" : "0");
	rc = run_script(c, &a, SC_OPEN, "checking the schema", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0]) ||
	    !is_str(r->element[1])) {
		rc = ACKBOX_ERR_STORE;
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply checking the schema",
		                  c->where);
	} else if (strcmp(r->element[0]->str, "!none") == 0) {
		rc = 1;
	} else if (strcmp(r->element[0]->str, "!type") == 0) {
		rc = ACKBOX_ERR_STORE_SCHEMA;
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: key '%s' already holds a %s that ackbox did not write; choose "
		                  "another ?prefix=",
		                  c->where, r->element[1]->str,
		                  r->elements > 2 && is_str(r->element[2]) ? r->element[2]->str : "?");
	} else if (strcmp(r->element[0]->str, SCHEMA_NAME) != 0) {
		rc = ACKBOX_ERR_STORE_SCHEMA;
		ackbox_errstr_set(errstr, errstr_size, "%s: foreign schema '%s' in %s (expected '%s')",
		                  c->where, r->element[0]->str, c->keys[K_META], SCHEMA_NAME);
	} else if (atoi(r->element[1]->str) < 1 || atoi(r->element[1]->str) > SCHEMA_VERSION) {
		rc = ACKBOX_ERR_STORE_SCHEMA;
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: schema version %s is not supported by this ackbox (it "
		                  "understands version %d); upgrade ackbox",
		                  c->where, r->element[1]->str, SCHEMA_VERSION);
	}
	freeReplyObject(r);
	return rc;
}

static int unpack_all(rd_ctx *c, char *errstr, size_t errstr_size);

/*
 * delivery.order=key on a store that does not keep per-key order yet:
 * builds the key sets and {P}:ready a page at a time (two passes), so no
 * script blocks the server for long. Writers that do not know the order
 * objects must not run meanwhile (docs/ordering.md).
 */
static int order_install(rd_ctx *c, char *errstr, size_t errstr_size)
{
	redisReply *r;
	const char *av[3] = {"HGET", c->keys[K_META], "order"};
	int rc = simple(c, "reading the schema", &r, errstr, errstr_size, 3, av);
	int have;
	if (rc)
		return rc;
	have = is_str(r) && strcmp(r->str, "1") == 0;
	freeReplyObject(r);
	if (have)
		return 0;
	/* a key's order lives in rows: batches written unordered are unpacked */
	rc = unpack_all(c, errstr, errstr_size);
	if (rc)
		return rc;
	for (int pass = 1; pass <= 2; pass++) {
		char start[ACKBOX_ID_STRLEN + 2] = "-";
		for (;;) {
			args a;
			int64_t seen;
			rc = args_init(&a, SCRIPT_HEAD + 3, 2);
			if (rc)
				return rc;
			args_script(c, &a, SC_ORDER_BUILD);
			args_str(&a, start);
			args_u64(&a, SWEEP);
			args_i64(&a, pass);
			rc = run_script(c, &a, SC_ORDER_BUILD, "installing per-key order", &r, errstr,
			                errstr_size);
			args_fini(&a);
			if (rc)
				return rc;
			seen = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? num(r->element[0]) : 0;
			if (seen && is_str(r->element[1]))
				snprintf(start, sizeof(start), "(%s", r->element[1]->str);
			freeReplyObject(r);
			if (seen < SWEEP)
				break;
		}
	}
	return 0;
}

static int rd_open(void *vctx, const ackbox_url *url, const ackbox_conf *conf, ackbox_sync sync,
                   char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	const char *create = ackbox_conf_get(conf, "store.create");
	int rc = parse_url(c, url, errstr, errstr_size);
	c->conf = conf;
	owner_name(c);
	if (rc == 0) {
		int64_t cto = conf_ms(conf, "redis.connect_timeout", 5000);
		c->cmd_ms = conf_ms(conf, "redis.timeout", 30000);
		set_tv(&c->connect_tv, cto);
		set_tv(&c->cmd_tv, c->cmd_ms);
		rc = connect_now(c, errstr, errstr_size);
	}
	if (rc == 0)
		rc = check_durability(c, conf, sync, errstr, errstr_size);
	if (rc == 0)
		rc = load_scripts(c, errstr, errstr_size);
	if (rc == 0)
		rc = check_schema(c, !create || strcmp(create, "open") == 0, errstr, errstr_size);
	if (rc == 1 && create && strcmp(create, "insert") == 0) {
		/* nothing is written until a message is: until then every key
		 * reads as empty, which is what this store holds */
		c->absent = 1;
		rc = 0;
	} else if (rc == 1) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: no ackbox store here (%s does not exist; store.create=never: "
		                  "it is not created)",
		                  c->where, c->keys[K_META]);
		rc = ACKBOX_ERR_STORE_SCHEMA;
	}
	if (rc == 0) {
		const char *order = ackbox_conf_get(conf, "delivery.order");
		c->ordered = order && strcmp(order, "key") == 0;
		/* an absent store gets it with its meta hash, at the first insert */
		if (c->ordered && !c->absent)
			rc = order_install(c, errstr, errstr_size);
	}
	if (rc)
		rd_close(c);
	return rc;
}

/* ------------------------------------------------------------------ */
/* The operations                                                       */
/* ------------------------------------------------------------------ */

/*
 * Writes recs as one packed batch; if they are leased to this handle (due
 * later: its relay has them in memory), remembers its members. 0, 1 if it
 * cannot be a batch (the caller writes rows: per-key order, or more than
 * one due), or an error. The batch's memory is taken first: once the
 * server has the batch, nothing can fail here.
 */
static int insert_packed(rd_ctx *c, const ackbox_store_rec *recs, size_t n, char *errstr,
                         size_t errstr_size)
{
	size_t size = 0, bytes = 0;
	int64_t due = INT64_MAX, created = INT64_MAX;
	char *data, *p, *idbin, nbuf[24];
	int held;
	rd_batch *b;
	args a;
	redisReply *r;
	int rc;

	for (size_t i = 0; i < n; i++) {
		const ackbox_store_rec *w = &recs[i];
		if (w->due_ms != recs[0].due_ms)
			return 1; /* one due for all: a claim takes the batch whole */
		size += 1 + 9 * 5 + 16 + 2 * 20 + strlen(w->topic) + 3 + w->key_len +
		        (w->content_type ? strlen(w->content_type) : 0) + w->headers_len +
		        w->payload_len;
		bytes += w->payload_len;
		if (w->due_ms < due)
			due = w->due_ms;
		if (w->created_ms < created)
			created = w->created_ms;
	}
	held = due > ackbox_wall_ms(); /* else the relay claims it from the store */
	data = malloc(size);
	idbin = malloc(n * 16);
	b = calloc(1, sizeof(*b) + (n + 7) / 8);
	if (b) {
		b->ids = malloc(n * sizeof(*b->ids));
		b->plen = malloc(n * sizeof(*b->plen));
	}
	if (!data || !idbin || !b || !b->ids || !b->plen || (held && map_reserve(c, n) != 0) ||
	    args_init(&a, SCRIPT_HEAD + 7, 5) != 0) {
		free(data);
		free(idbin);
		if (b) {
			free(b->ids);
			free(b->plen);
		}
		free(b);
		return ACKBOX_ERR_NOMEM;
	}
	/* the members, one after the other: each an array of the nine strings
	 * lua_insert takes (read back one at a time, so that damage loses only
	 * the members from it on) */
	p = data;
	for (size_t i = 0; i < n; i++) {
		const ackbox_store_rec *w = &recs[i];
		char flags[3] = {w->key_len ? '1' : '0', w->content_type ? '1' : '0',
		                 w->headers_len ? '1' : '0'};
		memcpy(idbin + i * 16, w->id.b, 16);
		*p++ = (char)0x99; /* fixarray of 9 */
		p = mp_str(p, w->id.b, 16);
		p = mp_i64(p, w->created_ms);
		p = mp_i64(p, w->due_ms);
		p = mp_str(p, w->topic, strlen(w->topic));
		p = mp_str(p, flags, 3);
		p = mp_str(p, w->key, w->key_len);
		p = mp_str(p, w->content_type ? w->content_type : "",
		           w->content_type ? strlen(w->content_type) : 0);
		p = mp_str(p, w->headers, w->headers_len);
		p = mp_str(p, w->payload, w->payload_len);
		b->ids[i] = w->id;
		b->plen[i] = (uint32_t)w->payload_len;
	}
	args_script(c, &a, SC_INSERT_PACKED);
	args_u64(&a, n);
	args_i64(&a, due);
	args_i64(&a, created);
	args_u64(&a, bytes);
	args_str(&a, c->owner);
	args_bin(&a, idbin, n * 16);
	args_bin(&a, data, (size_t)(p - data));
	rc = run_script(c, &a, SC_INSERT_PACKED, "insert", &r, errstr, errstr_size);
	args_fini(&a);
	free(data);
	free(idbin);
	if (rc == 0 && num(r) < 0)
		rc = 1;
	if (rc == 0 && held) {
		snprintf(nbuf, sizeof(nbuf), "%" PRId64, num(r));
		memcpy(b->bseq, nbuf, sizeof(b->bseq));
		b->n = b->live = (uint32_t)n;
		b->bytes = bytes;
		for (size_t i = 0; i < n; i++)
			map_put(c, &b->ids[i], b, (uint32_t)i);
		b->next = c->batches;
		if (c->batches)
			c->batches->prev = b;
		c->batches = b;
		b = NULL;
	}
	if (r)
		freeReplyObject(r);
	if (b) {
		free(b->ids);
		free(b->plen);
		free(b);
	}
	return rc;
}

static int rd_insert(void *vctx, const ackbox_store_rec *recs, size_t n, char *errstr,
                     size_t errstr_size)
{
	rd_ctx *c = vctx;
	char (*ids)[ACKBOX_ID_STRLEN];
	char(*flags)[4];
	args a;
	redisReply *r;
	int rc;

	if (n == 0)
		return 0;
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (c->absent) {
		rc = check_schema(c, 1, errstr, errstr_size);
		if (rc == 0 && c->ordered)
			rc = order_install(c, errstr, errstr_size);
		if (rc)
			return rc;
		c->absent = 0;
	}
	if (n >= PACK_MIN && !c->ordered) {
		size_t bytes = 0;
		for (size_t i = 0; i < n; i++)
			bytes += recs[i].payload_len + recs[i].headers_len + recs[i].key_len;
		if (bytes <= PACK_MAX_BYTES) {
			rc = insert_packed(c, recs, n, errstr, errstr_size);
			if (rc != 1)
				return rc;
		}
	}
	ids = malloc(n * sizeof(*ids));
	flags = malloc(n * sizeof(*flags));
	if (!ids || !flags || args_init(&a, SCRIPT_HEAD + 2 + 9 * n, 1 + 2 * n) != 0) {
		free(ids);
		free(flags);
		return ACKBOX_ERR_NOMEM;
	}
	args_script(c, &a, SC_INSERT);
	args_u64(&a, n);
	for (size_t i = 0; i < n; i++) {
		const ackbox_store_rec *w = &recs[i];
		ackbox_id_format(&w->id, ids[i]);
		flags[i][0] = w->key_len ? '1' : '0';
		flags[i][1] = w->content_type ? '1' : '0';
		flags[i][2] = w->headers_len ? '1' : '0';
		flags[i][3] = '\0';
		args_str(&a, ids[i]);
		args_i64(&a, w->created_ms);
		args_i64(&a, w->due_ms);
		args_str(&a, w->topic);
		args_str(&a, flags[i]);
		args_bin(&a, w->key, w->key_len);
		args_str(&a, w->content_type ? w->content_type : "");
		args_bin(&a, w->headers, w->headers_len);
		args_bin(&a, w->payload, w->payload_len);
	}
	args_str(&a, c->owner);
	rc = run_script(c, &a, SC_INSERT, "insert", &r, errstr, errstr_size);
	args_fini(&a);
	free(ids);
	free(flags);
	if (rc)
		return rc;
	freeReplyObject(r);
	return 0;
}

/* ------------------------------------------------------------------ */
/* The attempt history (store ABI 1.6)                                  */
/* ------------------------------------------------------------------ */

/* The first ACKBOX_HISTORY_TEXT_MAX bytes of t, not cutting a UTF-8 sequence. */
static int note_len(const char *t)
{
	size_t n = t ? strlen(t) : 0;
	if (n > ACKBOX_HISTORY_TEXT_MAX) {
		n = ACKBOX_HISTORY_TEXT_MAX;
		while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80)
			n--;
	}
	return (int)n;
}

/* A list element: "at_ms:outcome:code:text" (the text last: it may hold ':'). */
#define NOTE_SIZE (3 * 24 + ACKBOX_HISTORY_TEXT_MAX + 1)
static void note_encode(const ackbox_attempt *a, char out[NOTE_SIZE])
{
	snprintf(out, NOTE_SIZE, "%" PRId64 ":%d:%d:%.*s", a->at_ms, (int)a->outcome, a->code,
	         note_len(a->text), a->text ? a->text : "");
}

/* Reads a list element back; 0, or -1 if it is not one. */
static int note_decode(const char *s, ackbox_attempt *a, char text[ACKBOX_HISTORY_TEXT_MAX + 1])
{
	char *end;
	long oc, code;
	memset(a, 0, sizeof(*a));
	a->at_ms = strtoll(s, &end, 10);
	if (*end != ':')
		return -1;
	oc = strtol(end + 1, &end, 10);
	if (*end != ':')
		return -1;
	code = strtol(end + 1, &end, 10);
	if (*end != ':')
		return -1;
	a->outcome = (ackbox_outcome)oc;
	a->code = (int)code;
	snprintf(text, ACKBOX_HISTORY_TEXT_MAX + 1, "%.*s", note_len(end + 1), end + 1);
	a->text = text;
	return 0;
}

/* The note for change i, NULL if none (a DELETE takes the history along). */
static const ackbox_attempt *note_of(const ackbox_store_change *ch, const ackbox_attempt *notes,
                                     size_t i)
{
	return notes && notes[i].at_ms && ch[i].kind != ACKBOX_CHANGE_DELETE ? &notes[i] : NULL;
}

/*
 * Changes split in two: acks of members of batches this handle holds,
 * under the lease it holds them by, stay in their batch (its bits and live
 * count); everything else is a change to a row, and a member's other
 * change first asks its batch to be unpacked (in the same script, before
 * the rows' changes). A change under an older lease is fenced off as a
 * row's; one under a newer lease means the batch was unpacked and its
 * rows claimed, so this handle forgets the batch.
 */
static int rd_apply_noted(void *vctx, const ackbox_store_change *ch, const ackbox_attempt *notes,
                          size_t n, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	char (*ids)[ACKBOX_ID_STRLEN];
	char (*enc)[NOTE_SIZE] = NULL;
	rd_batch **touched, **of; /* the batches in this call; per change, its batch if an ack */
	size_t nb = 0, npacked = 0;
	args a;
	redisReply *r;
	int rc;

	if (n == 0)
		return 0;
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	ids = malloc(n * sizeof(*ids));
	of = calloc(n, sizeof(*of));
	touched = malloc(n * sizeof(*touched));
	if (notes)
		enc = malloc(n * sizeof(*enc));
	if (!ids || !of || !touched || (notes && !enc)) {
		free(ids);
		free(of);
		free(touched);
		free(enc);
		return ACKBOX_ERR_NOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		ackbox_idmap_slot *sl = c->map.n ? map_find(c, &ch[i].id) : NULL;
		rd_batch *b;
		ackbox_id_format(&ch[i].id, ids[i]);
		if (!sl)
			continue;
		b = sl->owner;
		if (ch[i].lease < b->lease)
			continue; /* from before this handle took the batch anew: fenced off */
		if (ch[i].lease > b->lease) {
			/* a later lease: the batch this handle holds is gone (its
			 * members were unpacked and claimed as rows) */
			for (size_t j = 0; j < nb; j++)
				if (touched[j] == b)
					b = NULL;
			if (b)
				batch_drop(c, b);
			else
				map_del(c, sl);
			continue;
		}
		if (!b->touched) {
			b->touched = 1;
			b->k = 0;
			b->unpack = 0;
			touched[nb++] = b;
		}
		if (ch[i].kind == ACKBOX_CHANGE_DELETE && !gone_bit(b, sl->idx)) {
			b->gone[sl->idx / 8] |= (uint8_t)(1u << (sl->idx % 8));
			b->live--;
			b->bytes -= b->plen[sl->idx];
			b->k++;
			of[i] = b;
			npacked++;
		} else if (ch[i].kind != ACKBOX_CHANGE_DELETE) {
			b->unpack = 1;
		}
	}
	r = NULL;
	if (args_init(&a, SCRIPT_HEAD + 3 + 7 * nb + npacked + 9 * n, 3 + 4 * nb + 5 * n) != 0) {
		rc = ACKBOX_ERR_NOMEM;
		goto out;
	}
	args_script(c, &a, SC_APPLY);
	args_i64(&a, ackbox_wall_ms());
	args_u64(&a, nb);
	for (size_t j = 0; j < nb; j++) {
		rd_batch *b = touched[j];
		args_str(&a, b->bseq);
		args_u64(&a, b->lease);
		args_bin(&a, b->gone, (b->n + 7) / 8);
		args_u64(&a, b->live);
		args_u64(&a, b->bytes);
		args_str(&a, b->unpack ? "1" : "0");
		args_u64(&a, b->k);
		for (size_t i = 0; i < n; i++)
			if (of[i] == b)
				args_str(&a, ids[i]);
	}
	args_u64(&a, n - npacked);
	for (size_t i = 0; i < n; i++) {
		if (of[i])
			continue;
		args_i64(&a, ch[i].kind);
		args_str(&a, ids[i]);
		args_u64(&a, ch[i].lease);
		args_i64(&a, ch[i].attempts);
		args_i64(&a, ch[i].due_ms);
		args_str(&a, ch[i].last_error ? "1" : "0");
		args_str(&a, ch[i].last_error ? ch[i].last_error : "");
		args_i64(&a, ch[i].last_code);
		if (note_of(ch, notes, i)) {
			note_encode(&notes[i], enc[i]);
			args_str(&a, enc[i]);
		} else {
			args_str(&a, "");
		}
	}
	/* one script: the notes are written with their changes, atomically */
	rc = run_script(c, &a, SC_APPLY, "state change", &r, errstr, errstr_size);
	args_fini(&a);
out:
	for (size_t j = 0; j < nb; j++)
		touched[j]->touched = 0;
	if (rc) {
		/* The core tries the same changes again: undo this call's acks, so
		 * that they count once. (The batch's fields are absolute, so a call
		 * that was applied although its reply was lost is applied again to
		 * the same effect.) */
		for (size_t i = 0; i < n; i++) {
			ackbox_idmap_slot *sl = of[i] ? map_find(c, &ch[i].id) : NULL;
			if (!sl)
				continue;
			of[i]->gone[sl->idx / 8] &= (uint8_t) ~(1u << (sl->idx % 8));
			of[i]->live++;
			of[i]->bytes += of[i]->plen[sl->idx];
		}
	} else {
		/* done with the acked members, with the batches emptied or
		 * unpacked, and with those the server no longer has */
		for (size_t i = 0; i < n; i++) {
			ackbox_idmap_slot *sl = of[i] ? map_find(c, &ch[i].id) : NULL;
			if (sl)
				map_del(c, sl);
		}
		for (size_t j = 0; j < nb; j++)
			if (touched[j]->live == 0 || touched[j]->unpack)
				batch_drop(c, touched[j]);
	}
	if (r) {
		for (size_t e = 1; r->type == REDIS_REPLY_ARRAY && e < r->elements; e++)
			if (is_str(r->element[e]))
				batch_drop_named(c, r->element[e]->str);
		freeReplyObject(r);
	}
	free(ids);
	free(of);
	free(touched);
	free(enc);
	return rc;
}

static int rd_apply(void *vctx, const ackbox_store_change *ch, size_t n, char *errstr,
                    size_t errstr_size)
{
	return rd_apply_noted(vctx, ch, NULL, n, errstr, errstr_size);
}

/* Members of damaged batches that could not even be named. */
static void log_lost(rd_ctx *c, int64_t lost)
{
	if (lost > 0)
		ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "redis",
		                 "%s: %" PRId64 " message(s) of a damaged packed batch could not be "
		                 "read, not even their ids: they are lost with the batch's bytes",
		                 c->where, lost);
}

/* Rows a claim leased but the callback did not take are given back. */
static void release_rest(rd_ctx *c, const redisReply *r, size_t from, int64_t now_ms)
{
	size_t n = r->elements / 2 - from, k = 0;
	ackbox_store_change *ch = calloc(n ? n : 1, sizeof(*ch));
	char err[256];
	if (!ch)
		return; /* the lease runs out by itself */
	for (size_t i = from; i < r->elements / 2; i++) {
		ackbox_store_row row;
		if (read_row(c, r->element[2 * i], r->element[2 * i + 1], &row, err, sizeof(err)) != 0)
			continue;
		ch[k].kind = ACKBOX_CHANGE_RELEASE;
		ch[k].id = row.id;
		ch[k].due_ms = now_ms;
		ch[k].lease = row.lease;
		k++;
	}
	rd_apply(c, ch, k, err, sizeof(err));
	free(ch);
}

/* Reads the MessagePack str at *off (any header mp_str writes); 0, or -1
 * if the bytes there are not one. */
static int mp_get_str(const unsigned char *d, size_t len, size_t *off, const char **v,
                      size_t *vlen)
{
	size_t o = *off, l, hl;
	unsigned t;
	if (o >= len)
		return -1;
	t = d[o++];
	if ((t & 0xe0) == 0xa0) {
		l = t & 0x1f;
		hl = 0;
	} else if (t == 0xd9 || t == 0xda || t == 0xdb) {
		hl = t == 0xd9 ? 1 : t == 0xda ? 2 : 4;
		if (len - o < hl)
			return -1;
		l = 0;
		for (size_t k = 0; k < hl; k++)
			l = l << 8 | d[o + k];
	} else {
		return -1;
	}
	o += hl;
	if (l > len - o)
		return -1;
	*v = (const char *)d + o;
	*vlen = l;
	*off = o + l;
	return 0;
}

/* A member: the nine strings, in the order insert_packed writes them. */
enum { PM_ID, PM_CREATED, PM_DUE, PM_TOPIC, PM_FLAGS, PM_KEY, PM_CT, PM_HEADERS, PM_PAYLOAD,
       PM_COUNT };
typedef struct pm {
	const char *v[PM_COUNT];
	size_t len[PM_COUNT];
} pm;

static int64_t pm_num(const pm *m, int f)
{
	char t[24];
	snprintf(t, sizeof(t), "%.*s", (int)(m->len[f] < 23 ? m->len[f] : 23), m->v[f]);
	return strtoll(t, NULL, 10);
}

/* Reads member k at *off: 0, or -1 if its bytes do not parse (or name
 * another id than ids, the batch's ids field if it is whole, says). */
static int pm_get(const unsigned char *d, size_t len, size_t *off, const char *ids, uint32_t k,
                  pm *m)
{
	if (*off >= len || d[*off] != 0x99)
		return -1;
	(*off)++;
	for (int f = 0; f < PM_COUNT; f++)
		if (mp_get_str(d, len, off, &m->v[f], &m->len[f]) != 0)
			return -1;
	if (m->len[PM_ID] != 16 || m->len[PM_FLAGS] != 3 || !m->len[PM_CREATED] || !m->len[PM_DUE])
		return -1;
	if (ids && memcmp(ids + (size_t)k * 16, m->v[PM_ID], 16) != 0)
		return -1;
	return 0;
}

/* The row member m is (SENDING, as its unpacked row would be), due at
 * due_ms under lease. tbuf holds its topic and content type: room for
 * both and two NULs. The row points into m's bytes and tbuf. */
static void member_row(const pm *m, int64_t due_ms, uint64_t lease, char *tbuf,
                       ackbox_store_row *row)
{
	memset(row, 0, sizeof(*row));
	memcpy(row->id.b, m->v[PM_ID], 16);
	row->state = ACKBOX_MSG_SENDING;
	row->created_ms = row->updated_ms = pm_num(m, PM_CREATED);
	row->due_ms = due_ms;
	memcpy(tbuf, m->v[PM_TOPIC], m->len[PM_TOPIC]);
	tbuf[m->len[PM_TOPIC]] = '\0';
	row->topic = tbuf;
	if (m->v[PM_FLAGS][0] == '1') {
		row->key = m->v[PM_KEY];
		row->key_len = m->len[PM_KEY];
	}
	if (m->v[PM_FLAGS][1] == '1') {
		char *ct = tbuf + m->len[PM_TOPIC] + 1;
		memcpy(ct, m->v[PM_CT], m->len[PM_CT]);
		ct[m->len[PM_CT]] = '\0';
		row->content_type = ct;
	}
	if (m->v[PM_FLAGS][2] == '1') {
		row->headers = m->v[PM_HEADERS];
		row->headers_len = m->len[PM_HEADERS];
	}
	row->payload = m->len[PM_PAYLOAD] ? m->v[PM_PAYLOAD] : "";
	row->payload_len = m->len[PM_PAYLOAD];
	row->lease = lease;
}

/* Unpacks the batch bseq with script `which`: SC_UNPACK_ONE, a claimed
 * batch whose bytes do not read (the damaged members FAILED, the rest rows
 * due now, claimed as rows), or SC_UNPACK_NAMED, the batch of a member
 * being forced (whoever holds it). */
static int unpack_batch(rd_ctx *c, int which, const char *bseq, char *errstr,
                        size_t errstr_size)
{
	args a;
	redisReply *r;
	int rc = args_init(&a, SCRIPT_HEAD + 2, 1);
	if (rc)
		return rc;
	args_script(c, &a, which);
	args_i64(&a, ackbox_wall_ms());
	args_str(&a, bseq);
	rc = run_script(c, &a, which,
	                which == SC_UNPACK_ONE ? "unpacking a damaged batch" : "unpacking a batch",
	                &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
		log_lost(c, num(r->element[1]));
	freeReplyObject(r);
	return 0;
}

/*
 * Hands out the members of a batch the claim took, b = {bseq, lease, n,
 * data, ids, acked bits}, but those acked, and holds it under its new
 * lease: their acks then set its bits as the publisher's would (a batch
 * this handle held before is held anew). The whole batch is read before a
 * member is handed out, so that damage hands out none: the server unpacks
 * it instead. Returns the rows handed out, or an error.
 */
static int hand_batch(rd_ctx *c, const redisReply *b, int64_t lease_until_ms,
                      ackbox_store_row_cb cb, void *opaque, int *stop, char *errstr,
                      size_t errstr_size)
{
	const redisReply *const *e;
	const unsigned char *d;
	const char *ids;
	size_t len, off = 0, tlen = 0;
	uint32_t n, k, handed = 0;
	rd_batch *mine;
	char *tbuf;
	int rc, shaped;

	shaped = b->type == REDIS_REPLY_ARRAY && b->elements == 6;
	for (size_t f = 0; shaped && f < 6; f++)
		shaped = is_str(b->element[f]);
	if (!shaped) {
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply to a claim (a batch)",
		                  c->where);
		return ACKBOX_ERR_STORE;
	}
	e = (const redisReply *const *)b->element;
	n = (uint32_t)strtoul(e[2]->str, NULL, 10);
	d = (const unsigned char *)e[3]->str;
	len = e[3]->len;
	ids = e[4]->len == (size_t)n * 16 ? e[4]->str : NULL;
	/* read it all first */
	for (k = 0; k < n; k++) {
		pm m;
		if (pm_get(d, len, &off, ids, k, &m) != 0)
			break;
		if (m.len[PM_TOPIC] + m.len[PM_CT] + 2 > tlen)
			tlen = m.len[PM_TOPIC] + m.len[PM_CT] + 2;
	}
	if (k < n || n == 0) {
		ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "redis",
		                 "%s: packed batch %s cannot be read from member %u of %u on: it is "
		                 "unpacked, its damaged members FAILED, the others sent as rows",
		                 c->where, e[0]->str, k + 1, n);
		rc = unpack_batch(c, SC_UNPACK_ONE, e[0]->str, errstr, errstr_size);
		return rc < 0 ? rc : 0;
	}
	batch_drop_named(c, e[0]->str); /* held before: its acks went with the old lease */
	mine = calloc(1, sizeof(*mine) + (n + 7) / 8);
	tbuf = malloc(tlen ? tlen : 1);
	if (mine) {
		mine->ids = malloc(n * sizeof(*mine->ids));
		mine->plen = malloc(n * sizeof(*mine->plen));
	}
	if (!mine || !tbuf || !mine->ids || !mine->plen || map_reserve(c, n) != 0) {
		if (mine) {
			free(mine->ids);
			free(mine->plen);
		}
		free(mine);
		free(tbuf);
		return ACKBOX_ERR_NOMEM; /* the batch is claimed again when its lease runs out */
	}
	snprintf(mine->bseq, sizeof(mine->bseq), "%s", e[0]->str);
	mine->lease = strtoull(e[1]->str, NULL, 10);
	mine->n = n;
	for (k = 0; k < n && k / 8 < e[5]->len; k++)
		if ((unsigned char)e[5]->str[k / 8] >> (k % 8) & 1)
			mine->gone[k / 8] |= (uint8_t)(1u << (k % 8));
	mine->next = c->batches;
	if (c->batches)
		c->batches->prev = mine;
	c->batches = mine;
	/* every member is held (a member the callback did not take stays
	 * leased until lease_until_ms); those taken are handed out */
	off = 0;
	for (k = 0; k < n; k++) {
		ackbox_store_row row;
		pm m;
		pm_get(d, len, &off, ids, k, &m);
		memcpy(mine->ids[k].b, m.v[PM_ID], 16);
		mine->plen[k] = (uint32_t)m.len[PM_PAYLOAD];
		if (gone_bit(mine, k))
			continue;
		mine->live++;
		mine->bytes += m.len[PM_PAYLOAD];
		if (!map_find(c, &mine->ids[k]))
			map_put(c, &mine->ids[k], mine, k);
		if (*stop)
			continue;
		member_row(&m, lease_until_ms, mine->lease, tbuf, &row);
		handed++;
		*stop = cb(&row, opaque);
	}
	free(tbuf);
	return (int)handed;
}

static int rd_claim(void *vctx, int64_t now_ms, int64_t lease_until_ms, size_t limit,
                    ackbox_store_row_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	args a;
	redisReply *r;
	size_t consumed = 0;
	int rc, stop = 0, n;

	if (limit == 0)
		return 0;
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD + 5, 3) != 0)
		return ACKBOX_ERR_NOMEM;
	args_script(c, &a, SC_CLAIM);
	args_i64(&a, now_ms);
	args_i64(&a, lease_until_ms);
	args_u64(&a, limit);
	args_str(&a, c->owner);
	args_str(&a, c->ordered ? "o" : "-");
	rc = run_script(c, &a, SC_CLAIM, "claim", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_ARRAY || r->element[1]->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(r);
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply to a claim", c->where);
		return ACKBOX_ERR_STORE;
	}
	n = 0;
	for (size_t i = 0; i < r->element[1]->elements && !stop; i++) {
		int got = hand_batch(c, r->element[1]->element[i], lease_until_ms, cb, opaque, &stop,
		                     errstr, errstr_size);
		if (got < 0) {
			freeReplyObject(r);
			return got;
		}
		n += got;
	}
	if (stop) {
		/* the rows it took stay leased until lease_until_ms */
		freeReplyObject(r);
		return n;
	}
	rc = walk_rows(c, r->element[0], cb, opaque, 1, &consumed, &stop, errstr, errstr_size);
	if (rc >= 0 && consumed < r->element[0]->elements / 2)
		release_rest(c, r->element[0], consumed, now_ms);
	freeReplyObject(r);
	return rc < 0 ? rc : rc + n;
}

/* Unpacks every packed batch (whoever holds it): for list, get, force and
 * installing per-key order, which work on rows. UNPACK_STEP batches per
 * script call, so that no call blocks the server for long. */
static int unpack_all(rd_ctx *c, char *errstr, size_t errstr_size)
{
	for (;;) {
		args a;
		redisReply *r;
		int64_t k;
		int rc = args_init(&a, SCRIPT_HEAD + 2, 2);
		if (rc)
			return rc;
		args_script(c, &a, SC_UNPACK);
		args_i64(&a, ackbox_wall_ms());
		args_u64(&a, UNPACK_STEP);
		rc = run_script(c, &a, SC_UNPACK, "unpacking batches", &r, errstr, errstr_size);
		args_fini(&a);
		if (rc)
			return rc;
		k = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? num(r->element[0]) : 0;
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 2)
			log_lost(c, num(r->element[1]));
		freeReplyObject(r);
		if (k < UNPACK_STEP)
			return 0;
	}
}

/* Runs a sweeping script (recover, requeue all, purge) until a call looks at
 * fewer than SWEEP ids, so that no single script blocks the server for long. */
static int sweep(rd_ctx *c, int which, const char *what, int64_t arg, const char *mode,
                 char *errstr, size_t errstr_size)
{
	int64_t total = 0;
	for (;;) {
		args a;
		redisReply *r;
		int64_t done, seen;
		int rc = args_init(&a, SCRIPT_HEAD + 3, 2);
		if (rc)
			return rc;
		args_script(c, &a, which);
		args_i64(&a, arg);
		if (mode)
			args_str(&a, mode);
		args_u64(&a, SWEEP);
		rc = run_script(c, &a, which, what, &r, errstr, errstr_size);
		args_fini(&a);
		if (rc)
			return rc;
		if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
			done = num(r->element[0]);
			seen = num(r->element[1]);
		} else {
			done = seen = num(r);
		}
		freeReplyObject(r);
		total += done;
		if (seen < SWEEP)
			break;
	}
	return total > INT32_MAX ? INT32_MAX : (int)total;
}

/* Keys whose head (oldest message) is FAILED; none before per-key order is installed. */
static int rd_blocked_keys(void *vctx, size_t limit, ackbox_store_blocked_cb cb, void *opaque,
                           char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	args a;
	redisReply *r;
	int rc = ready(c, errstr, errstr_size), n = 0;
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD + 1, 1) != 0)
		return ACKBOX_ERR_NOMEM;
	args_script(c, &a, SC_BLOCKED);
	args_u64(&a, limit ? limit : (uint64_t)INT32_MAX);
	rc = run_script(c, &a, SC_BLOCKED, "blocked keys", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 3 <= r->elements; i += 3) {
		ackbox_store_blocked b;
		memset(&b, 0, sizeof(b));
		if (!is_str(r->element[i]) || ackbox_id_parse(r->element[i]->str, &b.failed_id) != 0 ||
		    !is_str(r->element[i + 1]))
			continue;
		b.key = r->element[i + 1]->str;
		b.key_len = r->element[i + 1]->len;
		b.waiting = (uint64_t)num(r->element[i + 2]);
		n++;
		if (cb(&b, opaque))
			break;
	}
	freeReplyObject(r);
	return n;
}

static int recover_some(rd_ctx *c, int64_t now_ms, const char *what, char *errstr,
                        size_t errstr_size);

/*
 * Crash recovery at open: of the rows (and packed batches) leased into the future, those of this
 * handle, of no owner, or of a relay whose process is gone become due now;
 * those of a live relay (another publisher on this prefix) stay its own,
 * and those of one this process cannot check are taken by the claims once
 * their lease runs out. Pages of SWEEP ids; the ones left in place are
 * skipped by offset.
 */
static int rd_recover(void *vctx, int64_t now_ms, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	int rc = ready(c, errstr, errstr_size);
	for (const char *what = "m"; rc == 0 && what; what = what[0] == 'm' ? "b" : NULL)
		rc = recover_some(c, now_ms, what, errstr, errstr_size);
	return rc;
}

/* rd_recover for rows (what "m") or packed batches ("b"). */
static int recover_some(rd_ctx *c, int64_t now_ms, const char *what, char *errstr,
                        size_t errstr_size)
{
	int64_t skipped = 0;
	int rc = 0;
	while (rc == 0) {
		args a, t;
		redisReply *r, *tr;
		size_t k, take = 0;
		rc = args_init(&a, SCRIPT_HEAD + 4, 3);
		if (rc)
			return rc;
		args_script(c, &a, SC_RECOVER);
		args_i64(&a, now_ms);
		args_i64(&a, skipped);
		args_u64(&a, SWEEP);
		args_str(&a, what);
		rc = run_script(c, &a, SC_RECOVER, "recovery", &r, errstr, errstr_size);
		args_fini(&a);
		if (rc)
			return rc;
		k = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
		rc = args_init(&t, SCRIPT_HEAD + 2 + 2 * k, 1);
		if (rc) {
			freeReplyObject(r);
			return rc;
		}
		args_script(c, &t, SC_TAKE);
		args_i64(&t, now_ms);
		args_str(&t, what);
		for (size_t i = 0; i < k; i++) {
			const redisReply *id = r->element[2 * i], *ow = r->element[2 * i + 1];
			if (!is_str(id) || !is_str(ow) || !owner_gone(c, ow->str))
				continue;
			args_bin(&t, id->str, id->len);
			args_bin(&t, ow->str, ow->len);
			take++;
		}
		if (take)
			rc = run_script(c, &t, SC_TAKE, "recovery", &tr, errstr, errstr_size);
		if (take && rc == 0)
			freeReplyObject(tr);
		args_fini(&t);
		freeReplyObject(r);
		skipped += (int64_t)(k - take);
		if (k < SWEEP)
			break;
	}
	return rc < 0 ? rc : 0;
}

static int rd_counts(void *vctx, ackbox_counts *out, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	args a;
	redisReply *r;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD, 0) != 0)
		return ACKBOX_ERR_NOMEM;
	args_script(c, &a, SC_COUNTS);
	rc = run_script(c, &a, SC_COUNTS, "counting", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
		freeReplyObject(r);
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply counting", c->where);
		return ACKBOX_ERR_STORE;
	}
	out->sending = (uint64_t)num(r->element[0]);
	out->retrying = (uint64_t)num(r->element[1]);
	out->failed = (uint64_t)num(r->element[2]);
	/* a sorted-set score: a double, exact for millisecond times */
	out->oldest_pending_ms = is_str(r->element[3]) ? (int64_t)strtod(r->element[3]->str, NULL)
	                                               : 0;
	freeReplyObject(r);
	return 0;
}

static int rd_usage(void *vctx, uint64_t *messages, uint64_t *bytes, char *errstr,
                    size_t errstr_size)
{
	rd_ctx *c = vctx;
	args a;
	redisReply *r;
	int rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD, 0) != 0)
		return ACKBOX_ERR_NOMEM;
	args_script(c, &a, SC_USAGE);
	rc = run_script(c, &a, SC_USAGE, "measuring", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
		freeReplyObject(r);
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply measuring", c->where);
		return ACKBOX_ERR_STORE;
	}
	*messages = (uint64_t)num(r->element[0]);
	*bytes = (uint64_t)num(r->element[1]);
	freeReplyObject(r);
	return 0;
}

static int rd_has_pending(void *vctx, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	redisReply *r;
	args a;
	int rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD, 0) != 0)
		return ACKBOX_ERR_NOMEM;
	args_script(c, &a, SC_PENDING);
	rc = run_script(c, &a, SC_PENDING, "checking for pending rows", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	rc = num(r) > 0;
	freeReplyObject(r);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Reading packed batches as they are (list, get, force)                */
/* ------------------------------------------------------------------ */

/* Every batch's bseq, oldest first: *out is an array reply. */
static int batch_names(rd_ctx *c, redisReply **out, char *errstr, size_t errstr_size)
{
	args a;
	int rc = args_init(&a, SCRIPT_HEAD, 0);
	if (rc)
		return rc;
	args_script(c, &a, SC_BATCHES);
	rc = run_script(c, &a, SC_BATCHES, "listing packed batches", out, errstr, errstr_size);
	args_fini(&a);
	if (rc == 0 && (*out)->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(*out);
		*out = NULL;
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply listing packed batches",
		                  c->where);
		return ACKBOX_ERR_STORE;
	}
	return rc;
}

/* The batch bseq as {n, data, ids, taken, lease, acked bits} (*out), or
 * *out NULL if it is gone (acked, or unpacked, since it was named) or, with
 * want, its ids field does not name want. */
static int batch_read(rd_ctx *c, const char *bseq, const ackbox_id *want, redisReply **out,
                      char *errstr, size_t errstr_size)
{
	args a;
	int rc = args_init(&a, SCRIPT_HEAD + 2, 0), shaped;
	if (rc)
		return rc;
	args_script(c, &a, SC_BATCH_READ);
	args_str(&a, bseq);
	if (want)
		args_bin(&a, want->b, 16);
	rc = run_script(c, &a, SC_BATCH_READ, "reading a packed batch", out, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	if ((*out)->type == REDIS_REPLY_NIL) {
		freeReplyObject(*out);
		*out = NULL;
		return 0;
	}
	shaped = (*out)->type == REDIS_REPLY_ARRAY && (*out)->elements == 6;
	for (size_t f = 0; shaped && f < 6; f++)
		shaped = is_str((*out)->element[f]);
	if (!shaped) {
		freeReplyObject(*out);
		*out = NULL;
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply reading packed batch %s",
		                  c->where, bseq);
		return ACKBOX_ERR_STORE;
	}
	return 0;
}

/* The members of every batch not acked, batch by batch oldest first, as the
 * rows they would be unpacked into; nothing is written. Not a snapshot: a
 * batch acked or unpacked meanwhile is skipped (then its members are rows). */
typedef struct rd_pack_iter {
	rd_ctx *c;
	redisReply *names; /* batch_names */
	size_t next;       /* the next name to read */
	redisReply *cur;   /* the batch being read (batch_read), NULL between */
	const char *bseq;
	uint32_t n, k;     /* members; the next to read */
	size_t off;        /* of member k in the data */
	int64_t taken;     /* a claim's lease end, 0 if none */
	uint64_t lease;
	char *tbuf;        /* the row's topic and content type */
	size_t tcap;
	ackbox_store_row row;
	char damaged[24];  /* the last batch that could not be read, "" if none */
	const ackbox_id *want; /* get: only batches whose ids field names it */
} rd_pack_iter;

static void pack_iter_fini(rd_pack_iter *it)
{
	if (it->names)
		freeReplyObject(it->names);
	if (it->cur)
		freeReplyObject(it->cur);
	free(it->tbuf);
	memset(it, 0, sizeof(*it));
}

/* The next member, valid until the next call; NULL at the end or on an
 * error (*rc). A batch that cannot be read is skipped from where it stops
 * parsing, with a warning: the claim that takes it unpacks it. */
static const ackbox_store_row *pack_iter_next(rd_pack_iter *it, int *rc, char *errstr,
                                              size_t errstr_size)
{
	*rc = 0;
	for (;;) {
		while (it->cur && it->k < it->n) {
			const redisReply *const *e = (const redisReply *const *)it->cur->element;
			const char *ids = e[2]->len == (size_t)it->n * 16 ? e[2]->str : NULL;
			uint32_t k = it->k++;
			size_t need;
			pm m;
			if (pm_get((const unsigned char *)e[1]->str, e[1]->len, &it->off, ids, k, &m) != 0) {
				ackbox_store_log(it->c->conf, ACKBOX_LOG_WARN, "redis",
				                 "%s: packed batch %s cannot be read from member %u of %u "
				                 "on: those are not listed (the claim that takes the batch "
				                 "unpacks it, its damaged members FAILED)",
				                 it->c->where, it->bseq, k + 1, it->n);
				snprintf(it->damaged, sizeof(it->damaged), "%s", it->bseq);
				it->k = it->n;
				break;
			}
			if (k / 8 < e[5]->len && ((unsigned char)e[5]->str[k / 8] >> (k % 8) & 1))
				continue; /* acked */
			need = m.len[PM_TOPIC] + m.len[PM_CT] + 2;
			if (need > it->tcap) {
				char *t = realloc(it->tbuf, need);
				if (!t) {
					*rc = ACKBOX_ERR_NOMEM;
					return NULL;
				}
				it->tbuf = t;
				it->tcap = need;
			}
			member_row(&m, it->taken ? it->taken : pm_num(&m, PM_DUE), it->lease, it->tbuf,
			           &it->row);
			return &it->row;
		}
		if (it->cur) {
			freeReplyObject(it->cur);
			it->cur = NULL;
		}
		if (!it->names || it->next >= it->names->elements)
			return NULL;
		if (!is_str(it->names->element[it->next])) {
			it->next++;
			continue;
		}
		it->bseq = it->names->element[it->next++]->str;
		*rc = batch_read(it->c, it->bseq, it->want, &it->cur, errstr, errstr_size);
		if (*rc)
			return NULL;
		if (!it->cur)
			continue;
		it->n = (uint32_t)strtoul(it->cur->element[0]->str, NULL, 10);
		it->taken = strtoll(it->cur->element[3]->str, NULL, 10);
		it->lease = strtoull(it->cur->element[4]->str, NULL, 10);
		it->k = 0;
		it->off = 0;
	}
}

static const ackbox_store_row *pack_iter_next_v(void *it, int *rc, char *errstr,
                                                size_t errstr_size)
{
	return pack_iter_next(it, rc, errstr, errstr_size);
}

/*
 * Rows paged by id, and the members of packed batches (SENDING) merged in as
 * they are read: listing writes nothing, however large the backlog.
 */
static int rd_list(void *vctx, int state, size_t limit, ackbox_store_row_cb cb, void *opaque,
                   char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	char set[4], start[ACKBOX_ID_STRLEN + 2] = "-";
	size_t want = limit && limit < PAGE ? limit : PAGE;
	rd_pack_iter it;
	ackbox_rowmerge m;
	int rc;

	if (state > ACKBOX_MSG_FAILED)
		return 0;
	snprintf(set, sizeof(set), "%d", state < 0 ? 0 : state);
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	memset(&it, 0, sizeof(it));
	it.c = c;
	ackbox_rowmerge_init(&m, pack_iter_next_v, &it, limit, cb, opaque, errstr, errstr_size);
	/* packed members are SENDING (batch_names left out: it.names NULL, none) */
	if (state < 0 || state == ACKBOX_MSG_SENDING)
		rc = batch_names(c, &it.names, errstr, errstr_size);
	if (rc == 0)
		rc = ackbox_rowmerge_start(&m);
	if (rc) {
		pack_iter_fini(&it);
		return rc;
	}
	/* Page by id (ZRANGEBYLEX from the last id seen): rows deleted meanwhile
	 * do not shift the pages. */
	for (;;) {
		args a;
		redisReply *r;
		size_t consumed = 0, got;
		int stop = 0;
		if (args_init(&a, SCRIPT_HEAD + 3, 1) != 0) {
			rc = ACKBOX_ERR_NOMEM;
			break;
		}
		args_script(c, &a, SC_PAGE);
		args_str(&a, state < 0 ? "all" : set);
		args_str(&a, start);
		args_u64(&a, want);
		rc = run_script(c, &a, SC_PAGE, "list", &r, errstr, errstr_size);
		args_fini(&a);
		if (rc)
			break;
		rc = walk_rows(c, r, ackbox_rowmerge_cb, &m, 0, &consumed, &stop, errstr,
		               errstr_size);
		got = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
		if (rc >= 0 && got)
			snprintf(start, sizeof(start), "(%s", r->element[2 * (got - 1)]->str);
		freeReplyObject(r);
		if (rc < 0 || stop || m.stop || got < want)
			break;
	}
	if (rc >= 0)
		ackbox_rowmerge_before(&m, NULL);
	pack_iter_fini(&it);
	if (m.rc)
		return m.rc;
	return rc < 0 ? rc : (int)m.emitted;
}

/* Which batch holds id as a member not acked: its bseq (into bseq) and the
 * member as a row (to cb, if not NULL). 0, ACKBOX_ERR_NOT_FOUND, or an
 * error. Reads every batch's ids field until it is found; writes nothing. */
static int find_member(rd_ctx *c, const ackbox_id *id, char *bseq, size_t bseq_size,
                       ackbox_store_row_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	rd_pack_iter it;
	const ackbox_store_row *row;
	char idstr[ACKBOX_ID_STRLEN];
	int rc;

	memset(&it, 0, sizeof(it));
	it.c = c;
	it.want = id;
	rc = batch_names(c, &it.names, errstr, errstr_size);
	while (rc == 0 && (row = pack_iter_next(&it, &rc, errstr, errstr_size)) != NULL) {
		if (memcmp(row->id.b, id->b, 16) != 0)
			continue;
		snprintf(bseq, bseq_size, "%s", it.bseq);
		if (cb)
			cb(row, opaque);
		pack_iter_fini(&it);
		return 0;
	}
	ackbox_id_format(id, idstr);
	if (rc == 0 && it.damaged[0]) {
		/* it may be one of the members that could not be read */
		ackbox_errstr_set(errstr, errstr_size,
		                  "no readable message %s in %s: packed batch %s is damaged (the "
		                  "claim that takes it unpacks it, its damaged members FAILED)",
		                  idstr, c->where, it.damaged);
		rc = ACKBOX_ERR_STORE_CORRUPT;
	}
	pack_iter_fini(&it);
	if (rc)
		return rc;
	ackbox_errstr_set(errstr, errstr_size, "no message %s in %s", idstr, c->where);
	return ACKBOX_ERR_NOT_FOUND;
}

static int get_once(rd_ctx *c, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque,
                    char *errstr, size_t errstr_size)
{
	char idstr[ACKBOX_ID_STRLEN], *key = NULL;
	redisReply *r, idr;
	ackbox_store_row row;
	args a;
	int rc;

	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	ackbox_id_format(id, idstr);
	if (asprintf(&key, "%s%s", c->msg_prefix, idstr) < 0)
		return ACKBOX_ERR_NOMEM;
	if (args_init(&a, 2 + F_COUNT, 0) != 0) {
		free(key);
		return ACKBOX_ERR_NOMEM;
	}
	args_str(&a, "HMGET");
	args_str(&a, key);
	for (int f = 0; f < F_COUNT; f++)
		args_str(&a, field_name[f]);
	rc = command(c, &a, "get", &r, errstr, errstr_size);
	args_fini(&a);
	free(key);
	if (rc)
		return rc;
	memset(&idr, 0, sizeof(idr));
	idr.type = REDIS_REPLY_STRING;
	idr.str = idstr;
	idr.len = strlen(idstr);
	rc = read_row(c, &idr, r, &row, errstr, errstr_size);
	if (rc == 0)
		cb(&row, opaque);
	freeReplyObject(r);
	if (rc == 1) {
		ackbox_errstr_set(errstr, errstr_size, "no message %s in %s", idstr, c->where);
		return ACKBOX_ERR_NOT_FOUND;
	}
	return rc;
}

/* A row, or else a packed member, read where it is (which batch holds the
 * id only its inserting handle knows: the batches are searched). */
static int rd_get(void *vctx, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque,
                  char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	char bseq[ACKBOX_ID_STRLEN];
	int rc = get_once(c, id, cb, opaque, errstr, errstr_size);
	if (rc == ACKBOX_ERR_NOT_FOUND)
		rc = find_member(c, id, bseq, sizeof(bseq), cb, opaque, errstr, errstr_size);
	return rc;
}

static int rd_requeue(void *vctx, const ackbox_id *ids, size_t n, int64_t now_ms, char *errstr,
                      size_t errstr_size)
{
	rd_ctx *c = vctx;
	char (*idstr)[ACKBOX_ID_STRLEN];
	args a;
	redisReply *r;
	int rc = ready(c, errstr, errstr_size);

	if (rc)
		return rc;
	if (!ids)
		return sweep(c, SC_REQUEUE, "requeue", now_ms, "all", errstr, errstr_size);
	if (n == 0)
		return 0;
	idstr = malloc(n * sizeof(*idstr));
	if (!idstr || args_init(&a, SCRIPT_HEAD + 3 + n, 2) != 0) {
		free(idstr);
		return ACKBOX_ERR_NOMEM;
	}
	args_script(c, &a, SC_REQUEUE);
	args_i64(&a, now_ms);
	args_str(&a, "ids");
	args_u64(&a, n);
	for (size_t i = 0; i < n; i++) {
		ackbox_id_format(&ids[i], idstr[i]);
		args_str(&a, idstr[i]);
	}
	rc = run_script(c, &a, SC_REQUEUE, "requeue", &r, errstr, errstr_size);
	args_fini(&a);
	free(idstr);
	if (rc)
		return rc;
	rc = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? (int)num(r->element[0]) : 0;
	freeReplyObject(r);
	return rc;
}

static int rd_purge(void *vctx, int64_t older_than_ms, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	int rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	return sweep(c, SC_PURGE, "purge", older_than_ms, NULL, errstr, errstr_size);
}

static int force_once(rd_ctx *c, const ackbox_store_change *ch, const ackbox_attempt *note,
                      int64_t now_ms, char *errstr, size_t errstr_size)
{
	char idstr[ACKBOX_ID_STRLEN], enc[NOTE_SIZE] = "";
	args a;
	redisReply *r;
	int rc;

	if (ch->kind != ACKBOX_CHANGE_FAIL && ch->kind != ACKBOX_CHANGE_DELETE) {
		ackbox_errstr_set(errstr, errstr_size, "%s: force takes FAIL or DELETE", c->where);
		return ACKBOX_ERR_INVALID;
	}
	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (args_init(&a, SCRIPT_HEAD + 7, 3) != 0)
		return ACKBOX_ERR_NOMEM;
	ackbox_id_format(&ch->id, idstr);
	if (note && note->at_ms && ch->kind == ACKBOX_CHANGE_FAIL)
		note_encode(note, enc);
	args_script(c, &a, SC_FORCE);
	args_i64(&a, now_ms);
	args_i64(&a, ch->kind);
	args_str(&a, idstr);
	args_str(&a, ch->last_error ? "1" : "0");
	args_str(&a, ch->last_error ? ch->last_error : "");
	args_i64(&a, ch->last_code);
	args_str(&a, enc);
	rc = run_script(c, &a, SC_FORCE, "force", &r, errstr, errstr_size);
	args_fini(&a);
	if (rc)
		return rc;
	rc = (int)num(r);
	freeReplyObject(r);
	if (rc == 0) {
		ackbox_errstr_set(errstr, errstr_size, "no message %s in %s", idstr, c->where);
		return ACKBOX_ERR_NOT_FOUND;
	}
	return 1;
}

/* As rd_get: a packed member is forced once every batch is unpacked. */
static int rd_force_noted(void *vctx, const ackbox_store_change *ch, const ackbox_attempt *note,
                          int64_t now_ms, char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	char bseq[ACKBOX_ID_STRLEN];
	int rc = force_once(c, ch, note, now_ms, errstr, errstr_size);
	/* a packed member: its batch (only that one) becomes rows first */
	if (rc == ACKBOX_ERR_NOT_FOUND &&
	    (rc = find_member(c, &ch->id, bseq, sizeof(bseq), NULL, NULL, errstr, errstr_size)) == 0 &&
	    (rc = unpack_batch(c, SC_UNPACK_NAMED, bseq, errstr, errstr_size)) == 0)
		rc = force_once(c, ch, note, now_ms, errstr, errstr_size);
	return rc;
}

static int rd_force(void *vctx, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                    size_t errstr_size)
{
	return rd_force_noted(vctx, ch, NULL, now_ms, errstr, errstr_size);
}

/* One LRANGE: a list written by older versions of the scripts, or none,
 * reads as no history. */
static int rd_history(void *vctx, const ackbox_id *id, ackbox_store_attempt_cb cb, void *opaque,
                      char *errstr, size_t errstr_size)
{
	rd_ctx *c = vctx;
	char idstr[ACKBOX_ID_STRLEN], key[300], first[8];
	const char *av[4] = {"LRANGE", key, first, "-1"};
	redisReply *r;
	int rc, count = 0;

	rc = ready(c, errstr, errstr_size);
	if (rc)
		return rc;
	ackbox_id_format(id, idstr);
	/* msg_prefix is "{P}:m:" */
	snprintf(key, sizeof(key), "%.*sh:%s", (int)strlen(c->msg_prefix) - 2, c->msg_prefix, idstr);
	snprintf(first, sizeof(first), "-%d", ACKBOX_HISTORY_MAX);
	rc = simple(c, "reading the attempt history", &r, errstr, errstr_size, 4, av);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(r);
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: unexpected reply reading the attempt history of %s", c->where,
		                  idstr);
		return ACKBOX_ERR_STORE;
	}
	for (size_t i = 0; i < r->elements; i++) {
		ackbox_attempt at;
		char text[ACKBOX_HISTORY_TEXT_MAX + 1];
		if (!is_str(r->element[i]) || note_decode(r->element[i]->str, &at, text) != 0)
			continue; /* not ours: skipped, never a crash */
		count++;
		if (cb(&at, opaque))
			break;
	}
	freeReplyObject(r);
	return count;
}

const ackbox_store_ops ackbox_redis_store = {
	.abi_version = ACKBOX_STORE_ABI_VERSION,
	.struct_size = sizeof(ackbox_store_ops),
	.scheme = "redis",
	.caps = 0,
	.ctx_size = sizeof(rd_ctx),
	.props = rd_props,
	.description = "Redis via hiredis; durable with appendonly yes + appendfsync always",
	.open = rd_open,
	.close = rd_close,
	.insert = rd_insert,
	.claim = rd_claim,
	.apply = rd_apply,
	.recover = rd_recover,
	.counts = rd_counts,
	.list = rd_list,
	.get = rd_get,
	.requeue = rd_requeue,
	.purge = rd_purge,
	.has_pending = rd_has_pending,
	.force = rd_force,
	.usage = rd_usage,
	.blocked_keys = rd_blocked_keys,
	.apply_noted = rd_apply_noted,
	.force_noted = rd_force_noted,
	.history = rd_history,
};
