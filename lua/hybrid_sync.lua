-- eyelet: one hybrid sync call: an instance's deltas and reservations for some keys, applied
-- once each, and what every key needs to decide locally until the next sync.
--
-- KEYS[1]     the instance registry (a sorted set: member = instance id, score = last seen ms),
--             refreshed when ARGV[5] is "1" (single-server calls; on a cluster the registry is
--             refreshed by a call of its own, since it lives in another slot)
-- KEYS[2..m]  the hybrid keys of this call (all in one hash slot)
-- ARGV[1]     instance id (letters, digits, '-')
-- ARGV[2]     bucket width G in milliseconds
-- ARGV[3]     lease time-to-live in milliseconds: a reservation not refreshed for this long is
--             released (its instance died or lost Redis; the instance itself stops using it
--             after half of it)
-- ARGV[4]     the parts, little-endian doubles: for each part a header of 9
--               key index (2-based into KEYS), seq, W ms, C, used, release, want, flags, d
--             then d pairs (bucket index k, weight). Parts of one key come in increasing seq.
--             flags: 1 = reset (forget every bucket and every instance's reserve of the key
--             first; the instance's own sequence records stay); 2 = a suppressed key: its d
--             deltas are triples (k, accepted weight, declined weight)
-- ARGV[5]     "1": refresh the registry (KEYS[1]) and count live instances; "0": don't
-- ARGV[6]     registry time-to-live in milliseconds
-- ARGV[7]     now in milliseconds, or "" for the server clock (TIME)
-- Reply       little-endian doubles: now_ms, live instances (0 when not counted), then for each
--             part: applied (1, or 0 when its seq was applied before), R, live, free_at, and
--             for a suppressed part also: accepted (buckets only), declined, and the start (ms)
--             of the oldest live bucket (0: none)
--
-- Model (the Rust side is src/hybrid/): a key is one string, read with one GET and written
-- with one SET per call (a hash of fields cost twice the Redis CPU: four commands per key and
-- a string conversion per field). Little-endian doubles (every count is an integer below
-- 2^53, exact in a double) and instance ids as zero-terminated strings:
--   header            FORMAT, until (server ms the key's TTL lasts at least to), nb, nx, nr,
--                     ns, nc
--   nb x (k, weight)  admitted in bucket k, which covers [k*G, (k+1)*G) in server time; it
--                     counts while (k+1)*G + W > now: one bucket longer than an exact window,
--                     so a request counts at least W after it was admitted, whatever its
--                     offset in k.
--   nx x (k, weight)  suppressed keys: declined in bucket k (attempts count too: the
--                     suppression factor comes from the attempted rate), live as admissions.
--   nr x (id, R, at)  reserves: units instance id holds (counted as live until released or
--                     spent), refreshed at `at`; not refreshed for the lease time-to-live, a
--                     reserve becomes weight admitted in the bucket of its expiry (its instance
--                     may have spent it).
--   ns x (id, seq, at) the last part of id applied to this key (idempotency: a part whose
--                     reply was lost is sent again with its seq and applied at most once;
--                     instances never send a part again once it is older than W, and records
--                     are kept longer).
--   nc x (id, R, k)   a reserve of id that expired unrefreshed and was counted as R units
--                     admitted in bucket k. The next part of id applied reports what it really
--                     spent (its deltas): the R units come back out of bucket k then, so an
--                     instance that was only cut off for a while (a stalled server, a
--                     partition) is counted exactly once it reports; one that never does stays
--                     counted at R (never fewer than it spent).
-- A value of another type or format (an older version's) is replaced: its counts are lost, as
-- on a restarted server.
-- A part reports what its instance admitted since its previous part, bucket by bucket (deltas
-- older than the window are dropped: they no longer count), how many of those units came out of
-- its reserve (`used`, taken off R as the deltas add them to their buckets) and how many it
-- gives back unused (`release`); then the instance's reserve is topped up towards `want` out of
-- C minus everything live. A reserve never makes the live total exceed C; spent units move from
-- the reserve to their own bucket; so the buckets plus reserves bound every window by C.

local now = tonumber(ARGV[7])
local TTL_FLOOR = 60000
if now == nil then
  TTL_FLOOR = 0
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local inst = ARGV[1]
local G = tonumber(ARGV[2])
local LEASE_TTL = tonumber(ARGV[3])
local sunpack = struct.unpack
local spack = struct.pack
local floor = math.floor
local MAX_COUNT = 9007199254740991
local SLACK = 1000
local FORMAT = 1
-- doubles packed or unpacked by one struct call at most (the Lua stack holds 8000 values)
local CHUNK = 1000

local function sat(a, b)
  local x = a + b
  if x > MAX_COUNT then x = MAX_COUNT end
  return x
end

-- Struct formats, made once per call: d doubles, then r records (id, a, b); keyed by shape
-- (d and r stay below 4096: at most CHUNK values go through one struct call).
local fmts = {}
local function fmt(d, r)
  local id = d * 4096 + r
  local f = fmts[id]
  if f == nil then
    f = '<' .. string.rep('d', d) .. string.rep('sdd', r)
    fmts[id] = f
  end
  return f
end

local live_instances = 0
if ARGV[5] == '1' then
  local reg_ttl = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[1], now, inst)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(now - reg_ttl))
  redis.call('PEXPIRE', KEYS[1], reg_ttl * 10 + TTL_FLOOR)
  live_instances = redis.call('ZCARD', KEYS[1])
end

local function bucket_live(k, W)
  return (k + 1) * G + W > now
end

local function reserve_live(at)
  return at + LEASE_TTL > now
end

-- m doubles from raw at pos, as a list; and the position after them.
local function read_doubles(raw, pos, m)
  if m <= CHUNK then
    local v = { sunpack(fmt(m, 0), raw, pos) }
    pos = v[m + 1]
    v[m + 1] = nil
    return v, pos
  end
  local t = {}
  while m > 0 do
    local c = m
    if c > CHUNK then c = CHUNK end
    local v = { sunpack(fmt(c, 0), raw, pos) }
    pos = v[c + 1]
    local base = #t
    for j = 1, c do t[base + j] = v[j] end
    m = m - c
  end
  return t, pos
end

-- n records (id, a, b) from raw at pos, as a flat list; and the position after them.
local function read_records(raw, pos, n)
  if 3 * n <= CHUNK then
    local v = { sunpack(fmt(0, n), raw, pos) }
    pos = v[3 * n + 1]
    v[3 * n + 1] = nil
    return v, pos
  end
  local t = {}
  local id, a, b
  for j = 0, n - 1 do
    id, a, b, pos = sunpack('<sdd', raw, pos)
    t[3 * j + 1] = id
    t[3 * j + 2] = a
    t[3 * j + 3] = b
  end
  return t, pos
end

-- The index of the record of id in a flat list of records (a record gone has id false).
local function find(t, id)
  for j = 1, #t, 3 do
    if t[j] == id then return j end
  end
  return nil
end

-- In a flat list of (k, weight) pairs sorted by k: the index of the first pair whose k is at
-- least k (nil: none), and whether it is k's.
local function seek(b, k)
  local n = #b / 2
  if n == 0 or b[2 * n - 1] < k then return nil, false end
  local lo, hi = 1, n
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if b[2 * mid - 1] < k then lo = mid + 1 else hi = mid end
  end
  return 2 * lo - 1, b[2 * lo - 1] == k
end

-- Adds w to bucket k of a sorted flat list of pairs (new buckets are mostly the newest: an
-- append).
local function add(b, k, w)
  local j, found = seek(b, k)
  if j == nil then
    local n = #b
    b[n + 1] = k
    b[n + 2] = w
  elseif found then
    b[j + 1] = sat(b[j + 1], w)
  else
    table.insert(b, j, w)
    table.insert(b, j, k)
  end
end

local states = {}

-- A key's state: b (pairs k, weight admitted), x (pairs k, weight declined; nil: none),
-- r (reserves id, R, at), s (seq records id, seq, at), c (conversions id, R, k; nil: none),
-- til (server ms its TTL lasts at least to), W (the largest window of its parts).
local function load(i)
  local st = states[i]
  if st then return st end
  st = { W = 0, til = 0 }
  local raw = redis.pcall('GET', KEYS[i])
  if type(raw) == 'string' and string.len(raw) >= 56 then
    local format, til, nb, nx, nr, ns, nc, pos = sunpack('<ddddddd', raw)
    if format == FORMAT then
      st.til = til
      st.b, pos = read_doubles(raw, pos, 2 * nb)
      if nx > 0 then st.x, pos = read_doubles(raw, pos, 2 * nx) end
      st.r, pos = read_records(raw, pos, nr)
      st.s, pos = read_records(raw, pos, ns)
      if nc > 0 then st.c = read_records(raw, pos, nc) end
    end
  end
  if st.b == nil then
    st.b, st.r, st.s = {}, {}, {}
  end
  -- A reserve its instance stopped refreshing (dead, or cut off from Redis) may have been
  -- spent in part before the instance lost touch; those units reach Redis only when it
  -- reconnects. Until then count the whole reserve as admitted at its expiry: never less than
  -- what was spent (at worst a reserve counts twice for a window, never zero times).
  local r = st.r
  for j = 1, #r, 3 do
    local id = r[j]
    if id and r[j + 2] + LEASE_TTL <= now then
      local k = floor((r[j + 2] + LEASE_TTL) / G)
      add(st.b, k, r[j + 1])
      r[j] = false
      -- (an older conversion of the same instance stays counted: it was never reconciled)
      local c = st.c
      if c == nil then
        c = {}
        st.c = c
      end
      if find(c, id) == nil then
        local n = #c
        c[n + 1] = id
        c[n + 2] = r[j + 1]
        c[n + 3] = k
      end
    end
  end
  states[i] = st
  return st
end

-- Everything live: buckets of window W and every instance's unexpired reserve.
-- Also returns the weight of the live buckets alone and the start of the oldest (0: none).
local function live_total(st, W)
  local total, free_at, oldest = 0, 0, 0
  local b = st.b
  for j = 1, #b, 2 do
    local k, v = b[j], b[j + 1]
    if v > 0 and bucket_live(k, W) then
      total = sat(total, v)
      local ends = (k + 1) * G + W
      if free_at == 0 or ends < free_at then free_at = ends end
      if oldest == 0 or k * G < oldest then oldest = k * G end
    end
  end
  local accepted = total
  local r = st.r
  for j = 1, #r, 3 do
    if r[j] and reserve_live(r[j + 2]) then total = sat(total, r[j + 1]) end
  end
  return total, free_at, accepted, oldest
end

-- Suppressed keys: declined weight live, and the start of the oldest live bucket, accepted
-- (`oldest`, from live_total) or declined (0: none).
local function attempts(st, W, oldest)
  local declined = 0
  local x = st.x
  if x then
    for j = 1, #x, 2 do
      local k, v = x[j], x[j + 1]
      if v > 0 and bucket_live(k, W) then
        declined = sat(declined, v)
        if oldest == 0 or k * G < oldest then oldest = k * G end
      end
    end
  end
  return declined, oldest
end

-- This instance's live reserve in st (0: none).
local function own_reserve(st)
  local r = st.r
  local j = find(r, inst)
  if j and reserve_live(r[j + 2]) then return r[j + 1], j end
  return 0, j
end

local out = { now, live_instances }
local ops = ARGV[4]
local pos = 1
local len = string.len(ops)
while pos <= len do
  local ki, seq, W, C, used, release, want, flags, d
  ki, seq, W, C, used, release, want, flags, d, pos = sunpack('<ddddddddd', ops, pos)
  local st = load(ki)
  local sup = floor(flags / 2) % 2 == 1
  if W > st.W then st.W = W end
  local s = st.s
  local sj = find(s, inst)
  local applied = 0
  if sj == nil or seq > s[sj + 1] then
    applied = 1
    if sj then
      s[sj + 1] = seq
      s[sj + 2] = now
    else
      local n = #s
      s[n + 1] = inst
      s[n + 2] = seq
      s[n + 3] = now
    end
    if flags % 2 == 1 then
      st.b, st.x, st.r, st.c = {}, nil, {}, nil
    end
    -- This instance reports again after its reserve was counted as admitted at expiry: what
    -- it spent arrives as deltas, so the conversion comes back out.
    local c = st.c
    local cj = c and find(c, inst)
    if cj then
      local bj, found = seek(st.b, c[cj + 2])
      if found then
        local v = st.b[bj + 1] - c[cj + 1]
        if v < 0 then v = 0 end
        st.b[bj + 1] = v
      end
      c[cj] = false
    end
    local R, rj = own_reserve(st)
    R = R - used - release
    if R < 0 then R = 0 end
    for _ = 1, d do
      local k, w, x
      if sup then
        k, w, x, pos = sunpack('<ddd', ops, pos)
      else
        k, w, pos = sunpack('<dd', ops, pos)
        x = 0
      end
      if w > 0 and bucket_live(k, W) then add(st.b, k, w) end
      if x > 0 and bucket_live(k, W) then
        if st.x == nil then st.x = {} end
        add(st.x, k, x)
      end
    end
    local r = st.r
    if rj then r[rj] = false end
    if want > R then
      local total = live_total(st, W)
      local room = C - total - R
      if room > 0 then
        local top = want - R
        if top > room then top = room end
        R = R + top
      end
    end
    if R > 0 then
      if rj == nil then rj = #r + 1 end
      r[rj] = inst
      r[rj + 1] = R
      r[rj + 2] = now
    end
  else
    if sup then pos = pos + d * 24 else pos = pos + d * 16 end
    -- a part sent again: the instance holds its reserve from now on (as after the first copy)
    local R, rj = own_reserve(st)
    if R > 0 then st.r[rj + 2] = now end
  end
  local total, free_at, accepted, oldest = live_total(st, W)
  out[#out + 1] = applied
  out[#out + 1] = own_reserve(st)
  out[#out + 1] = total
  out[#out + 1] = free_at
  if sup then
    local declined
    declined, oldest = attempts(st, W, oldest)
    out[#out + 1] = accepted
    out[#out + 1] = declined
    out[#out + 1] = oldest
  end
end

-- Write back every key of the call: what is still live, with a TTL past all of it. A part
-- older than W is never sent again (its deltas no longer count, its reserve has expired), so
-- a seq record is kept as long as the key's buckets and reserves. A TTL set is twice what is
-- needed, and kept (KEEPTTL) while it lasts long enough: most writes set none (setting one
-- costs about as much as the rest of the write).
for i, st in pairs(states) do
  local W = st.W
  local keep = W + G + LEASE_TTL + SLACK
  local px = nil
  local til = st.til
  if til < now + keep then
    px = floor(2 * keep)
    til = now + px
  end
  local v = { FORMAT, til, 0, 0, 0, 0, 0 }
  local n = 7
  local b = st.b
  for j = 1, #b, 2 do
    if b[j + 1] > 0 and bucket_live(b[j], W) then
      v[n + 1] = b[j]
      v[n + 2] = b[j + 1]
      n = n + 2
    end
  end
  local nb = (n - 7) / 2
  local x = st.x
  if x then
    for j = 1, #x, 2 do
      if x[j + 1] > 0 and bucket_live(x[j], W) then
        v[n + 1] = x[j]
        v[n + 2] = x[j + 1]
        n = n + 2
      end
    end
  end
  local nd = n
  local r, s, c = st.r, st.s, st.c
  for j = 1, #r, 3 do
    if r[j] and reserve_live(r[j + 2]) then
      v[n + 1], v[n + 2], v[n + 3] = r[j], r[j + 1], r[j + 2]
      n = n + 3
    end
  end
  local nr = (n - nd) / 3
  for j = 1, #s, 3 do
    if s[j + 2] + keep > now then
      v[n + 1], v[n + 2], v[n + 3] = s[j], s[j + 1], s[j + 2]
      n = n + 3
    end
  end
  local ns = (n - nd) / 3 - nr
  if c then
    for j = 1, #c, 3 do
      if c[j] and bucket_live(c[j + 2], W) then
        v[n + 1], v[n + 2], v[n + 3] = c[j], c[j + 1], c[j + 2]
        n = n + 3
      end
    end
  end
  local nrec = (n - nd) / 3
  v[3], v[4], v[5], v[6], v[7] = nb, (nd - 7) / 2 - nb, nr, ns, nrec - nr - ns
  local value
  if n <= CHUNK then
    value = spack(fmt(nd, nrec), unpack(v, 1, n))
  else
    local pieces = {}
    for a = 1, nd, CHUNK do
      local e = a + CHUNK - 1
      if e > nd then e = nd end
      pieces[#pieces + 1] = spack(fmt(e - a + 1, 0), unpack(v, a, e))
    end
    for a = nd + 1, n, 3 do
      pieces[#pieces + 1] = spack('<sdd', v[a], v[a + 1], v[a + 2])
    end
    value = table.concat(pieces)
  end
  if px then
    redis.call('SET', KEYS[i], value, 'PX', px + TTL_FLOOR)
  else
    redis.call('SET', KEYS[i], value, 'KEEPTTL')
  end
end

local packed = {}
for i = 1, #out, CHUNK do
  local j = i + CHUNK - 1
  if j > #out then j = #out end
  packed[#packed + 1] = spack(fmt(j - i + 1, 0), unpack(out, i, j))
end
return table.concat(packed)
