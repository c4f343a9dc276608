-- eyelet: batched rate-limit operations on sliding windows (absolute and suppressed).
--
-- KEYS[1..m]  the limiter keys this call touches (all in one hash slot: the caller groups by
--             slot). Each key is a hash: field "m" holds the window header, fields "<seq>" the
--             buckets strictly between the oldest and the newest (those two live in "m").
-- ARGV[1]     now in milliseconds, or "" to read the server clock (TIME, read once per call)
-- ARGV[2]     bucket width G in milliseconds
-- ARGV[3]     the operations, 56 bytes each: 7 little-endian doubles
--             op, key index (1-based into KEYS), window W_eff ms, capacity C, hard limit H,
--             weight n, draw (uniform in [0, 1), used only in the suppressed band)
--             op: 1 absolute inc, 2 absolute check, 3 absolute get,
--                 4 suppressed inc, 5 suppressed check, 6 suppressed get, 7 reset
-- Reply       one string of little-endian doubles: now_ms, then 4 per operation: kind, a, b, c
--             kind 0 Allowed                                   (a, b, c = 0)
--             kind 1 Rejected: a retry_after_ms (-1 = never), b remaining_after_waiting, c W_eff
--             kind 2 Suppressed: a is_allowed (0/1), b factor span (-1 = hard cutoff, factor 1),
--                    c attempted weight; the caller computes the factor from b and c with the
--                    same arithmetic (so it is bit-identical and no float is formatted here)
--             kind 3 absolute get: a live total
--             kind 4 suppressed get: a accepted, b declined, c factor
--             kind 5 reset: a = 1 if the key existed
--
-- The rules mirror src/math (window.rs, absolute.rs, suppressed.rs) operation for operation, so
-- both providers give the same decisions for the same calls and clock:
-- * every call first drops the buckets that left the key's span, and only a recording call
--   (inc with n >= 1) may then move the span; reads and probes never change a later answer;
-- * a window whose buckets all left its span is a new key (its span is forgotten), so a key
--   dropped by its TTL answers as one that was kept;
-- * suppressed buckets hold accepted and declined weight (never attempts minus declines, which
--   saturate separately); a total that saturated is recounted from the buckets.
-- Nothing is written before every operation has been decided and the reply packed, so an error
-- raised by the script leaves no state behind; the first write is an HSET (or a DEL, which makes
-- every later write of the call pass the OOM check), so OOM and READONLY fail the whole call.
-- Every write refreshes the key's TTL so that it outlives its live buckets; an idle key expires
-- on its own.

local now = tonumber(ARGV[1])
-- With the caller's clock (tests) TTLs still run on the server's: keep keys at least a minute.
local TTL_FLOOR = 60000
if now == nil then
  TTL_FLOOR = 0
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local G = tonumber(ARGV[2])
local HEADER = '<dddddddddddddddd'
local OP = '<ddddddd'
local TTL_SLACK = 1000
local sunpack = struct.unpack
local spack = struct.pack
local floor = math.floor
-- Lua's unpack (and so any call spreading a table into arguments) has a stack limit of about
-- 8000 values: argument lists and the reply are built in chunks of this many values.
local CHUNK = 1000

-- a + b, saturating at 2^53 - 1 (the most a Lua number counts exactly; src/math saturates at
-- 2^64 - 1).
local MAX_COUNT = 9007199254740991
local function sat(a, b)
  local x = a + b
  if x > MAX_COUNT then x = MAX_COUNT end
  return x
end

-- Window state per key, loaded on first use and written back once at the end.
local states = {}

local function load(k)
  local w = states[k]
  if w then return w end
  local key = KEYS[k]
  local m = redis.call('HGET', key, 'm')
  if m then
    local A, D, newest, span, span_seen, head, len, last_soft, last_window, exp,
      hs, ha, hd, ts, ta, td = sunpack(HEADER, m)
    local hb = { hs, ha, hd }
    -- one bucket is both the oldest and the newest: one table, so updates reach both
    local tb = hb
    if len > 1 then tb = { ts, ta, td } end
    w = { key = key, cache = false, dirty = false, removed = false, wipe = false,
      changed = false, exists = true, A = A, D = D, newest = newest, span = span,
      span_seen = span_seen, head = head, len = len, last_soft = last_soft,
      last_window = last_window, exp = exp, hb = hb, tb = tb }
  else
    local hb = { 0, 0, 0 }
    w = { key = key, cache = false, dirty = false, removed = false, wipe = false,
      changed = false, exists = false, A = 0, D = 0, newest = 0, span = 0, span_seen = 0,
      head = 0, len = 0, last_soft = 0, last_window = 0, exp = 0, hb = hb, tb = hb }
  end
  states[k] = w
  return w
end

-- A middle bucket `seq` ({start, accepted, declined}), from its field.
local function field(w, seq)
  if not w.cache then w.cache = {} end
  local b = w.cache[seq]
  if b then return b end
  local v = redis.call('HGET', w.key, tostring(seq))
  if v then
    local s, t, d = sunpack('<ddd', v)
    b = { s, t, d }
  else
    b = { 0, 0, 0 }
  end
  w.cache[seq] = b
  return b
end

-- Bucket `seq`; the oldest and the newest live in the header.
local function bucket(w, seq)
  if seq == w.head then return w.hb end
  if seq == w.head + w.len - 1 then return w.tb end
  return field(w, seq)
end

-- Forgets every bucket and the span: a new key. Dropping what left the span changes no answer,
-- so it marks nothing to write; whatever the call writes later starts from a clean hash.
local function clear(w)
  -- fields may exist (middle buckets, or ones awaiting HDEL): drop the whole hash (a reset
  -- earlier in the call may already have asked for that)
  w.wipe = w.wipe or w.exists
  w.len, w.A, w.D, w.span, w.span_seen = 0, 0, 0, 0, 0
  w.cache, w.dirty, w.removed = false, false, false
  w.hb = { 0, 0, 0 }
  w.tb = w.hb
end

-- Loads every bucket field of a key at once (reads walk all buckets).
local function preload(w)
  -- after a wipe every middle bucket is new and cached; the stored fields are stale
  if w.len <= 2 or w.preloaded or w.wipe then return end
  w.preloaded = true
  local all = redis.call('HGETALL', w.key)
  for i = 1, #all, 2 do
    local seq = tonumber(all[i])
    if not w.cache then w.cache = {} end
    if seq and w.cache[seq] == nil and not (w.removed and w.removed[seq]) then
      local s, bt, bd = sunpack('<ddd', all[i + 1])
      w.cache[seq] = { s, bt, bd }
    end
  end
end

-- Sets A and D to the saturating sums of the buckets held (after a clipped total lost a bucket).
local function recount(w)
  preload(w)
  local a, d = 0, 0
  for i = 0, w.len - 1 do
    local b = bucket(w, w.head + i)
    a = sat(a, b[2])
    d = sat(d, b[3])
  end
  w.A, w.D = a, d
end

-- Drops the buckets that left the span (the window's own rule: as src/math/window.rs trim).
local function trim(w, t)
  if w.len == 0 then return end
  if w.newest + w.span <= t then
    clear(w)
    return
  end
  local clipped = w.A >= MAX_COUNT or w.D >= MAX_COUNT
  local before = w.len
  while w.len > 1 do
    local front = w.hb
    if t - front[1] < w.span then break end
    w.A = math.max(w.A - front[2], 0)
    w.D = math.max(w.D - front[3], 0)
    w.head = w.head + 1
    w.len = w.len - 1
    if w.len == 1 then
      w.hb = w.tb
    else
      -- the next bucket moves from its field into the header
      w.hb = field(w, w.head)
      if not w.removed then w.removed = {} end
      w.removed[w.head] = true
      if w.dirty then w.dirty[w.head] = nil end
      if w.cache then w.cache[w.head] = nil end
    end
  end
  if clipped and w.len ~= before then recount(w) end
end

-- Brings the window to t for a call with window win: trims with the span in effect, then a
-- recording call (confirm) moves the span, as src/math/window.rs advance (confirmed every half
-- span, shrunk 1.5 spans after the last confirmation; an empty window has no span).
local function advance(w, t, win, confirm)
  trim(w, t)
  if not confirm or w.len == 0 then return end
  -- modulo 2^32, as src/math/window.rs keeps the last confirmation in 32 bits
  local since = ((t % 4294967296) - (w.span_seen % 4294967296)) % 4294967296
  if win > w.span then
    w.span = win
    w.span_seen = t
    w.changed = true
  elseif since >= w.span + floor(w.span / 2) then
    w.span_seen = t
    w.changed = true
    if win < w.span then
      w.span = win
      trim(w, t)
    end
  elseif win == w.span and since >= floor(w.span / 2) then
    if w.span_seen ~= t then w.changed = true end
    w.span_seen = t
  end
end

-- Sums (accepted, declined) of the buckets live at t for window win (after advance).
local function live(w, t, win)
  if w.len == 0 or w.newest + win <= t then return 0, 0 end
  if win >= w.span or w.len == 1 then return w.A, w.D end
  local st, sd = 0, 0
  for i = w.len - 1, 0, -1 do
    local b = bucket(w, w.head + i)
    if t - b[1] >= win then break end
    st = sat(st, b[2])
    sd = sat(sd, b[3])
  end
  return st, sd
end

-- Sums of the buckets live at t for window win, for reads (correct without advance): a bucket
-- that left the span is gone even if no call trimmed it.
local function live_untrimmed(w, t, win)
  local st, sd = 0, 0
  if win > w.span then win = w.span end
  if w.newest + win <= t then return st, sd end
  for i = 0, w.len - 1 do
    local b = bucket(w, w.head + i)
    if t - b[1] < win then
      st = sat(st, b[2])
      sd = sat(sd, b[3])
    end
  end
  return st, sd
end

-- Start of the oldest bucket live at t for window win (and inside the span).
local function oldest_live_start(w, t, win)
  if win > w.span then win = w.span end
  if w.newest + win <= t then return nil end
  for i = 0, w.len - 1 do
    local b = bucket(w, w.head + i)
    if t - b[1] < win then return b[1] end
  end
  return nil
end

-- Records accepted ba and declined bd at t for a call with window win (after advance).
local function record(w, t, ba, bd, suppressed, win)
  w.changed = true
  if w.len == 0 then
    -- the first bucket of an empty window sets its span
    w.len = 1
    w.hb = { t, ba, bd }
    w.tb = w.hb
    w.A, w.D = ba, bd
    w.newest = t
    w.span = win
    w.span_seen = t
    return
  end
  if t - w.newest < G then
    local last = w.tb
    -- accepted weight joins only a bucket holding accepted weight (src/math/window.rs joinable)
    if (not suppressed) or last[2] > 0 or ba == 0 then
      last[2] = sat(last[2], ba)
      last[3] = sat(last[3], bd)
      w.A = sat(w.A, ba)
      w.D = sat(w.D, bd)
      return
    end
  end
  -- open a bucket: the old tail becomes a field unless it is also the head
  local old_tail = w.head + w.len - 1
  if w.len >= 2 then
    if not w.cache then w.cache = {} end
    w.cache[old_tail] = w.tb
    if not w.dirty then w.dirty = {} end
    w.dirty[old_tail] = true
  end
  w.len = w.len + 1
  w.tb = { t, ba, bd }
  w.A = sat(w.A, ba)
  w.D = sat(w.D, bd)
  w.newest = t
end

-- The clamped span and attempted weight the factor is computed from (nil when it is 0).
local function factor_inputs(attempted, oldest, t, win)
  if oldest == nil or attempted == 0 then return nil end
  local span = t - oldest
  local lo = G
  if win < lo then lo = win end
  local hi = win
  if hi < 1 then hi = 1 end
  if span < lo then span = lo end
  if span > hi then span = hi end
  return span
end

-- sf = clamp(1 - (S / W_eff) / (T / span), 0, 1), as src/math/suppressed.rs computes it.
local function factor_from(attempted, oldest, t, win, soft)
  local span = factor_inputs(attempted, oldest, t, win)
  if span == nil then return 0 end
  local ratio = (soft * span) / (win * attempted)
  local sf = 1 - ratio
  if sf < 0 then sf = 0 end
  if sf > 1 then sf = 1 end
  return sf
end

local function absolute(w, t, win, cap, n, rec)
  advance(w, t, win, rec and n > 0)
  if n > cap then return 1, -1, cap, win end
  local need = n
  if need < 1 then need = 1 end
  local lv = live(w, t, win)
  if lv + need <= cap then
    if rec and n > 0 then record(w, t, n, 0, false, win) end
    return 0, 0, 0, 0
  end
  -- The shortest wait: the oldest live buckets expire (at their start + W_eff, or when they
  -- leave the span if that is sooner) until the request fits, as src/math/absolute.rs walks.
  local expiry = win
  if w.span < expiry then expiry = w.span end
  local remaining = 0
  local retry_at = t
  if lv < MAX_COUNT then
    -- oldest first: usually the oldest bucket (in the header) frees enough
    remaining = lv
    for i = 0, w.len - 1 do
      local b = bucket(w, w.head + i)
      if t - b[1] < win then
        remaining = remaining - b[2]
        retry_at = b[1] + expiry
        if remaining + need <= cap then break end
      end
    end
  else
    -- the total clipped at 2^53 - 1, so it cannot be walked down: sum what stays instead,
    -- newest first (the same answer; the sums stay below C)
    for i = w.len - 1, 0, -1 do
      local b = bucket(w, w.head + i)
      if t - b[1] >= win then break end
      if remaining + b[2] + need > cap then
        retry_at = b[1] + expiry
        break
      end
      remaining = remaining + b[2]
    end
  end
  if remaining < 0 then remaining = 0 end
  local free = cap - remaining
  if free < 0 then free = 0 end
  local wait = retry_at - t
  if wait < 0 then wait = 0 end
  return 1, wait, free, win
end

local function suppressed(w, t, win, soft, hard, n, draw, rec)
  advance(w, t, win, rec and n > 0)
  if rec and n > 0 then
    w.last_soft = soft
    w.last_window = win
    w.changed = true
  end
  local need = n
  if need < 1 then need = 1 end
  local accepted, declined = live(w, t, win)
  local total = sat(accepted, declined)
  local kind, a, b, c, dec
  if accepted + need <= soft then
    kind, a, b, c, dec = 0, 0, 0, 0, false
  elseif accepted + need > hard then
    kind, a, b, c, dec = 2, 0, -1, 0, true
  else
    local span = factor_inputs(total, oldest_live_start(w, t, win), t, win)
    local sf = 0
    if span ~= nil then
      sf = 1 - (soft * span) / (win * total)
      if sf < 0 then sf = 0 end
      if sf > 1 then sf = 1 end
    else
      span = 0
    end
    local ok = sf <= 0 or (sf < 1 and draw >= sf)
    if ok then a = 1 else a = 0 end
    kind, b, c, dec = 2, span, total, not ok
  end
  if rec and n > 0 then
    if dec then
      record(w, t, 0, n, true, win)
    else
      record(w, t, n, 0, true, win)
    end
  end
  return kind, a, b, c
end

local function header(w)
  return spack(HEADER, w.A, w.D, w.newest, w.span, w.span_seen, w.head, w.len, w.last_soft,
    w.last_window, w.exp, w.hb[1], w.hb[2], w.hb[3], w.tb[1], w.tb[2], w.tb[3])
end

-- Runs `cmd key args...` in chunks (Lua's unpack has a stack limit).
local function chunked(cmd, key, args)
  local i = 1
  while i <= #args do
    local j = i + CHUNK - 1
    if j > #args then j = #args end
    redis.call(cmd, key, unpack(args, i, j))
    i = j + 1
  end
end

local function write_back(w, t)
  if w.len == 0 then
    -- an empty window is a new key: no state. A reset drops the stored hash; a window that
    -- merely emptied is left to its TTL (reads write nothing).
    if w.reset and w.wipe then redis.call('DEL', w.key) end
    return
  end
  if not w.changed then return end
  if w.wipe then redis.call('DEL', w.key) end
  -- the TTL must outlive every live bucket: the window is empty from newest + span on
  local need = w.newest + w.span
  local refresh = w.wipe or (not w.exists) or w.exp < need
  if refresh then w.exp = need + w.span end
  if w.dirty then
    local fields = { 'm', header(w) }
    for seq, _ in pairs(w.dirty) do
      if seq > w.head and seq < w.head + w.len - 1 then
        local b = w.cache[seq]
        fields[#fields + 1] = tostring(seq)
        fields[#fields + 1] = spack('<ddd', b[1], b[2], b[3])
      end
    end
    chunked('HSET', w.key, fields)
  else
    redis.call('HSET', w.key, 'm', header(w))
  end
  if w.removed and not w.wipe then
    local del = {}
    for seq, _ in pairs(w.removed) do del[#del + 1] = tostring(seq) end
    chunked('HDEL', w.key, del)
  end
  if refresh then
    local ttl = floor(w.exp - t) + TTL_SLACK
    if ttl < TTL_FLOOR then ttl = TTL_FLOOR end
    redis.call('PEXPIRE', w.key, ttl)
  end
end

-- The numbers of `list` as one string of little-endian doubles, packed in chunks.
local function pack_all(list)
  local parts = {}
  local i = 1
  while i <= #list do
    local j = i + CHUNK - 1
    if j > #list then j = #list end
    parts[#parts + 1] = spack('<' .. string.rep('d', j - i + 1), unpack(list, i, j))
    i = j + 1
  end
  return table.concat(parts)
end

local ops = ARGV[3]
local nops = #ops / 56
local reply = { now }
local r = 1
local pos = 1
for i = 1, nops do
  local op, k, win, cap, hard, n, draw
  op, k, win, cap, hard, n, draw, pos = sunpack(OP, ops, pos)
  local w = load(k)
  -- a key's time never runs backwards (server clock steps)
  local t = now
  if w.newest > t then t = w.newest end
  if w.span_seen > t then t = w.span_seen end
  local kind, a, b, c
  if op == 1 or op == 2 then
    kind, a, b, c = absolute(w, t, win, cap, n, op == 1)
  elseif op == 4 or op == 5 then
    kind, a, b, c = suppressed(w, t, win, cap, hard, n, draw, op == 4)
  elseif op == 3 then
    preload(w)
    kind, a, b, c = 3, live_untrimmed(w, t, w.span), 0, 0
  elseif op == 6 then
    preload(w)
    local lw = w.last_window
    if lw < 1 then lw = 1 end
    local accepted, declined = live_untrimmed(w, t, w.span)
    local la, ld = live_untrimmed(w, t, lw)
    local sf = factor_from(sat(la, ld), oldest_live_start(w, t, lw), t, lw, w.last_soft)
    kind, a, b, c = 4, accepted, declined, sf
  else
    -- reset: forget the key, including what earlier operations of this call did to it; the
    -- stored hash is deleted with the call's other writes, after every operation is decided
    local had = w.exists or w.len > 0
    local hb = { 0, 0, 0 }
    states[k] = { key = w.key, cache = false, dirty = false, removed = false,
      wipe = w.exists or w.wipe, reset = true, changed = false, exists = false, A = 0, D = 0,
      newest = 0, span = 0, span_seen = 0, head = 0, len = 0, last_soft = 0, last_window = 0,
      exp = 0, hb = hb, tb = hb }
    kind, a, b, c = 5, 0, 0, 0
    if had then a = 1 end
  end
  reply[r + 1] = kind
  reply[r + 2] = a
  reply[r + 3] = b
  reply[r + 4] = c
  r = r + 4
end
-- Every operation is decided and the reply packed before the first write: an error above leaves
-- nothing applied.
local packed = pack_all(reply)
for _, w in pairs(states) do
  write_back(w, now)
end
return packed
