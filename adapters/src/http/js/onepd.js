/*! onepd.js: the onepd browser API (Apache-2.0), served by onepd at /js/onepd.js. */
// The loader snippet (README) makes `window.onepd` an array recording calls;
// this script replaces it with the API and replays them in order. Messages
// wait in a per-tab queue in localStorage until the server acknowledges them,
// so a reload re-sends what was not confirmed: the server stores each
// messageId once, which makes sending twice harmless.
(() => {
  'use strict';

  const stub = window.onepd;
  if (stub && !Array.isArray(stub)) return; // loaded twice

  const VERSION = '0.1.0';
  const CAMPAIGN = { utm_source: 'source', utm_medium: 'medium', utm_campaign: 'name', utm_term: 'term', utm_content: 'content' };
  const CLICK_IDS = ['fbclid', 'gclid', 'ttclid'];
  const DAYS_90 = 90 * 864e5; // click ids attribute this long (the longest ad window)
  const KEEPALIVE = 60000; // keepalive fetches and beacons carry at most 64 KB
  const ORPHANED = 120000; // a queue not refreshed for this long lost its tab
  const QUEUE = 'onepd_queue.'; // + the tab's id
  const DEFAULTS = {
    host: '',
    autoPage: true,
    flushInterval: 1000, // ms a message waits for others to share its request
    flushAt: 20, // or fewer, when this many wait
    maxBatchBytes: KEEPALIVE,
    maxQueueSize: 1000, // beyond it the oldest messages are dropped
    retryBase: 1000, // ms before the first retry, doubled per failure
    retryMax: 60000,
    cookieDomain: undefined, // default: the widest domain taking a cookie
  };

  // --- Helpers ---------------------------------------------------------------

  // Storage may be full or disabled (privacy modes); tracking goes on in memory.
  const safely = (fn, fallback) => {
    try { return fn(); } catch { return fallback; }
  };
  const load = (key) => safely(() => JSON.parse(localStorage.getItem(key)), null);
  const save = (key, value) =>
    safely(() => (value == null ? localStorage.removeItem(key) : localStorage.setItem(key, JSON.stringify(value))));
  const getCookie = (name) => {
    const found = document.cookie.split('; ').find((part) => part.startsWith(`${name}=`));
    return found ? decodeURIComponent(found.slice(name.length + 1)) : null;
  };
  const setCookie = (name, value, days, domain) => {
    document.cookie = `${name}=${encodeURIComponent(value)}; Max-Age=${days * 86400}; Path=/; SameSite=Lax` +
      (domain ? `; Domain=${domain}` : '') + (location.protocol === 'https:' ? '; Secure' : '');
  };
  // Browsers refuse cookies on public suffixes (`com`, `co.uk`), so the first
  // domain taking one, from the right, is the registrable domain. IP addresses
  // and single-label hosts get host-only cookies ('').
  const topDomain = () => {
    const labels = location.hostname.split('.');
    if (labels.length < 2 || /^[\d.]+$|:/.test(location.hostname)) return '';
    for (let i = labels.length - 2; i >= 0; i--) {
      const domain = labels.slice(i).join('.');
      setCookie('onepd_probe', '1', 1, domain);
      if (getCookie('onepd_probe')) {
        setCookie('onepd_probe', '', 0, domain);
        return domain;
      }
    }
    return '';
  };
  const uuid = () => {
    if (crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context; elsewhere, a version 4 UUID by hand.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return hex.replace(/(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
  };
  const isObject = (value) => value != null && typeof value === 'object' && !Array.isArray(value);
  const bytes = (text) => new Blob([text]).size;
  const param = (name) => new URLSearchParams(location.search).get(name);
  const url = () => location.href.replace(/#.*/, '');

  // --- State -----------------------------------------------------------------

  let options, writeKey, endpoint, domain, anonymousId, userId, traits, consent, clickIds, fbc, fbp;
  let lastUrl; // a single-page app's previous URL: its next page's referrer
  let callTime; // when a replayed call was made
  let loaded = false;
  const waiting = []; // [method, args, time] called before load()
  const readyCallbacks = [];

  const setAnonymousId = (id) => {
    anonymousId = id;
    setCookie('onepd_anonymous_id', id, 365, domain);
    save('onepd_anonymous_id', id);
  };

  // Click ids from the URL, remembered with their capture time; Meta's fbc
  // and fbp: fb.<subdomain index>.<creation time, ms>.<fbclid | random>.
  const captureAttribution = () => {
    const now = Date.now();
    const known = load('onepd_click_ids') || {};
    clickIds = {};
    for (const name of CLICK_IDS) {
      const value = param(name);
      if (value) clickIds[name] = known[name]?.value === value ? known[name] : { value, at: now };
      else if (now - known[name]?.at < DAYS_90) clickIds[name] = known[name];
    }
    save('onepd_click_ids', clickIds);
    const index = domain ? domain.split('.').length - 1 : 1; // example.com is 1
    const click = clickIds.fbclid;
    fbc = getCookie('_fbc');
    if (click && !fbc?.endsWith(`.${click.value}`) && (param('fbclid') || !fbc)) {
      fbc = `fb.${index}.${click.at}.${click.value}`;
      setCookie('_fbc', fbc, 90, domain); // as Meta's Pixel would
    }
    fbp = getCookie('_fbp');
    if (!fbp) {
      const [high, low] = crypto.getRandomValues(new Uint32Array(2));
      fbp = `fb.${index}.${now}.${1e9 + ((high * 2 ** 21 + (low >>> 11)) % 9e9)}`; // ten random digits
    }
    setCookie('_fbp', fbp, 90, domain); // renewed on each visit, as the Pixel does
  };

  const pageContext = () => ({
    path: location.pathname,
    referrer: lastUrl ?? document.referrer,
    search: location.search,
    title: document.title,
    url: url(),
  });

  const context = () => {
    const campaign = Object.entries(CAMPAIGN).filter(([name]) => param(name)).map(([name, field]) => [field, param(name)]);
    const ids = Object.entries(clickIds).map(([name, { value, at }]) => [name, { value, capturedAt: new Date(at).toISOString() }]);
    return {
      library: { name: 'onepd.js', version: VERSION },
      userAgent: navigator.userAgent,
      locale: navigator.language,
      page: pageContext(),
      ...(campaign.length && { campaign: Object.fromEntries(campaign) }),
      ...(ids.length && { clickIds: Object.fromEntries(ids) }),
      ...(fbc && { fbc }),
      fbp,
      ...(consent && { consent: { categoryPreferences: { ...consent } } }),
    };
  };

  const send = (type, fields, opts = {}) => {
    const message = {
      type,
      messageId: opts.messageId || uuid(),
      anonymousId,
      ...(userId && type !== 'alias' && { userId }),
      timestamp: new Date(opts.timestamp || callTime || Date.now()).toISOString(),
      context: { ...context(), ...opts.context },
      ...(opts.integrations && { integrations: opts.integrations }),
      ...fields,
    };
    if (bytes(JSON.stringify(message)) > 32768) console.warn(`onepd: ${type} not sent: over the 32 KB limit`);
    else queue.push(message);
    return api;
  };

  // The default action is not held back: the message is stored before the
  // browser moves on and sent by a keepalive fetch, which outlives the page.
  const bind = (targets, type, event, properties) => {
    // (A form has a `length` too: test for an element before a list.)
    const list = typeof targets === 'string' ? document.querySelectorAll(targets) : targets instanceof Element ? [targets] : targets || [];
    for (const element of list) {
      const value = (v) => (typeof v === 'function' ? v(element) : v);
      element.addEventListener(type, () => (api.track(value(event), value(properties)), api.flush()));
    }
    return api;
  };

  // A single-page app changing its URL is a page view; a new #fragment alone is not.
  const watchHistory = () => {
    let current = url();
    const changed = () => {
      if (url() === current) return;
      [lastUrl, current] = [current, url()];
      api.page();
    };
    for (const method of ['pushState', 'replaceState']) {
      const original = history[method];
      history[method] = function (...args) {
        const result = original.apply(this, args);
        changed();
        return result;
      };
    }
    addEventListener('popstate', changed);
  };

  // --- The API (README, "Browser JavaScript API") ----------------------------

  const methods = {
    track: (event, properties, opts) => send('track', { event: String(event), properties: { ...properties } }, opts),

    identify(id, more, opts) {
      if (isObject(id)) [id, more, opts] = [null, id, more];
      if (id != null && id !== '') userId = String(id);
      traits = { ...traits, ...more }; // traits accumulate
      save('onepd_user_id', userId);
      save('onepd_user_traits', traits);
      return send('identify', { traits: { ...traits } }, opts);
    },

    // page(category?, name?, properties?, options?)
    page(...args) {
      const names = [];
      while (names.length < 2 && args.length && (typeof args[0] === 'string' || args[0] == null)) names.push(args.shift());
      const [category, name] = names.length === 2 ? names : [null, names[0]];
      const named = { ...(name != null && { name }), ...(category != null && { category }) };
      return send('page', { ...named, properties: { ...pageContext(), ...named, ...args[0] } }, args[1]);
    },

    group: (groupId, groupTraits, opts) => send('group', { groupId: String(groupId), traits: { ...groupTraits } }, opts),

    alias(id, previousId, opts) {
      if (isObject(previousId)) [previousId, opts] = [undefined, previousId];
      return send('alias', { userId: String(id), previousId: String(previousId ?? userId ?? anonymousId) }, opts);
    },

    // Consent is a choice of the browser's user, so it survives reset().
    reset() {
      userId = null;
      traits = {};
      save('onepd_user_id', null);
      save('onepd_user_traits', null);
      setAnonymousId(uuid());
      return api;
    },

    consent(categories) {
      consent = { ...categories };
      save('onepd_consent', consent);
      return api.track('Segment Consent Preference Updated'); // Segment's name for it
    },

    trackClick: (elements, event, properties) => bind(elements, 'click', event, properties),
    trackSubmit: (forms, event, properties) => bind(forms, 'submit', event, properties),
  };

  const api = {
    load(key, opts) {
      if (loaded) return api;
      writeKey = key;
      options = { ...DEFAULTS, ...opts };
      endpoint = `${String(options.host).replace(/\/+$/, '')}/v1/batch`;
      domain = options.cookieDomain ?? topDomain();
      setAnonymousId(getCookie('onepd_anonymous_id') || load('onepd_anonymous_id') || uuid()); // renews the cookie
      userId = load('onepd_user_id');
      traits = load('onepd_user_traits') || {};
      consent = load('onepd_consent');
      captureAttribution();
      queue.start();
      loaded = true;
      for (const [method, args, at] of waiting.splice(0)) replay(method, args, at);
      if (options.autoPage) api.page(), watchHistory();
      for (const callback of readyCallbacks.splice(0)) callback(api);
      return api;
    },
    ready: (callback) => (loaded ? callback(api) : readyCallbacks.push(callback), api),
    flush: () => (loaded ? queue.flush() : Promise.resolve()),
    user: () => ({ id: userId ?? null, anonymousId, traits: { ...traits } }),
  };
  // Before load() calls wait, dated, and run when it is called.
  for (const [name, method] of Object.entries(methods)) {
    api[name] = (...args) => (loaded ? method(...args) : (waiting.push([name, args, Date.now()]), api));
  }
  const replay = (method, args, at) => {
    callTime = at;
    try { api[method]?.(...args); } finally { callTime = undefined; }
  };

  // --- The queue -------------------------------------------------------------

  // This tab's messages, in memory and at localStorage `onepd_queue.<tab>` as
  // {at, items}. The tab's id is kept in sessionStorage, so a reload finds its
  // queue again. `at` says the tab lives: refreshed every 15 s, 0 once the
  // page is gone. A tab adopts the queues whose `at` is 0 or stale, so each
  // stored queue has one sender; when two tabs adopt one at once, or a frozen
  // tab wakes up, the server keeps one copy of each messageId.
  const queue = {
    items: [],
    attempt: 0, // failures in a row
    retrying: false, // the timer is a backoff, not to be cut short
    handed: new Set(), // messageIds a fetch under way or a beacon carries: not beaconed again

    start() {
      let tab = safely(() => sessionStorage.getItem('onepd_tab'));
      // A duplicated tab copies sessionStorage: a live queue of its id is another page's.
      if (!tab || load(QUEUE + tab)?.at > Date.now() - ORPHANED) tab = uuid();
      safely(() => sessionStorage.setItem('onepd_tab', tab));
      this.key = QUEUE + tab;
      this.items = load(this.key)?.items || [];
      this.adopt();
      this.save();
      setInterval(() => (this.save(), this.adopt()), 15000);
      addEventListener('online', () => ((this.attempt = 0), this.flush()));
      addEventListener('visibilitychange', () => document.visibilityState === 'hidden' && this.beacon());
      addEventListener('pagehide', () => (this.beacon(), this.save(0)));
      addEventListener('pageshow', (event) => event.persisted && this.save()); // back from the bfcache
      this.schedule(0);
    },

    save(at = Date.now()) {
      save(this.key, { at, items: this.items });
    },

    adopt() {
      const known = new Set(this.items.map((message) => message.messageId));
      const before = this.items.length;
      for (const key of safely(() => Object.keys(localStorage), [])) {
        const orphan = key.startsWith(QUEUE) && key !== this.key && load(key);
        if (!orphan || orphan.at > Date.now() - ORPHANED) continue;
        save(key, null);
        this.items.push(...(orphan.items || []).filter((message) => !known.has(message.messageId)));
      }
      if (this.items.length > before) this.save(), this.schedule(0);
    },

    push(message) {
      this.items.push(message);
      const excess = this.items.length - options.maxQueueSize;
      if (excess > 0) console.warn(`onepd: queue full, dropped ${this.items.splice(0, excess).length} oldest messages`);
      this.save();
      this.schedule(this.items.length >= options.flushAt ? 0 : options.flushInterval);
    },

    // A flush in `delay` ms, unless one is under way or sooner, or a backoff runs.
    schedule(delay) {
      if (this.sending || this.retrying || (this.timer && delay > 0)) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.flush(), delay);
    },

    flush() {
      if (this.sending) return this.sending;
      clearTimeout(this.timer);
      this.timer = null;
      this.retrying = false;
      this.sending = this.drain().finally(() => {
        this.sending = null;
        // Messages pushed while the last answer was read.
        if (this.items.length && !this.timer && navigator.onLine) this.schedule(options.flushInterval);
      });
      return this.sending;
    },

    async drain() {
      // Offline, the `online` event flushes.
      while (this.items.length && navigator.onLine) {
        const retryIn = await this.send(this.batch(this.items));
        if (retryIn != null) {
          this.retrying = true;
          this.timer = setTimeout(() => this.flush(), retryIn);
          return;
        }
      }
    },

    // The oldest messages that fit in one request.
    batch(messages) {
      let size = 200; // the envelope
      const batch = [];
      for (const message of messages) {
        size += bytes(JSON.stringify(message)) + 50; // and its sentAt
        if (batch.length && size > options.maxBatchBytes) break;
        batch.push(message);
      }
      return batch;
    },

    body(batch) {
      const sentAt = new Date().toISOString();
      return JSON.stringify({ batch: batch.map((message) => ({ ...message, sentAt })), writeKey, sentAt });
    },

    // Sends one batch; answers the delay before retrying it, or undefined when
    // it is done with: acknowledged, or refused for good and dropped.
    async send(batch) {
      const body = this.body(batch);
      const ids = batch.map((message) => message.messageId);
      ids.forEach((id) => this.handed.add(id));
      let response;
      try {
        // text/plain keeps the request simple (no CORS preflight); the server
        // reads JSON whatever the content type.
        response = await fetch(endpoint, {
          method: 'POST',
          headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
          body,
          keepalive: bytes(body) <= KEEPALIVE,
          credentials: 'omit',
        });
      } catch {
        return this.backoff(0); // offline, refused or cut off
      } finally {
        ids.forEach((id) => this.handed.delete(id));
      }
      const answer = await response.json().catch(() => ({}));
      if (response.status === 429 || response.status >= 500) {
        // Retry-After (seconds) is readable cross-origin: the server exposes it.
        return this.backoff(Number(response.headers.get('Retry-After')) * 1000 || 0);
      }
      if (response.ok) {
        // Rejected messages are recorded as such: sending them again changes nothing.
        for (const { messageId, reasons } of answer.rejected || []) console.warn(`onepd: ${messageId} rejected`, reasons);
        this.attempt = 0;
      } else {
        console.warn(`onepd: ${batch.length} messages dropped: ${response.status}`, answer.message || '');
      }
      this.items = this.items.filter((message) => !ids.includes(message.messageId));
      this.save();
    },

    // Exponential and capped, jittered over its upper half so that clients
    // failing together do not retry together; never before Retry-After.
    backoff(minimum) {
      const delay = Math.min(options.retryMax, options.retryBase * 2 ** this.attempt++);
      return Math.max(minimum, delay * (0.5 + Math.random() / 2));
    },

    // The page may never run again: hand what waits to the browser, which
    // sends a beacon even after the page is gone. A beacon is never
    // confirmed, so its messages stay stored until a later send is
    // acknowledged; if both arrive, the server keeps one.
    beacon() {
      const batch = this.batch(this.items.filter((message) => !this.handed.has(message.messageId)));
      const blob = () => new Blob([this.body(batch)], { type: 'text/plain' });
      if (batch.length && navigator.sendBeacon?.(endpoint, blob())) batch.forEach((m) => this.handed.add(m.messageId));
    },
  };

  // --- Start: the snippet's record, in order ---------------------------------

  window.onepd = api;
  for (const entry of stub || []) {
    const [method, ...args] = entry;
    if (method === 'load' || method === 'ready') api[method](...args);
    else if (loaded) replay(method, args, entry.t);
    else waiting.push([method, args, entry.t]);
  }
})();
