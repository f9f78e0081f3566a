// charbot studio: a little progressive enhancement over server-rendered pages.
// Every piece of user or model text is put in the page with textContent, never as HTML.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf() },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// Reads a POST response of server-sent events (event:/data: frames) and calls onEvent.
async function postStream(url, body, onEvent) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf() },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.error || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(event, data ? JSON.parse(data) : {});
    }
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- chat ------------------------------------------------------------------------------------

function setupChat() {
  const log = document.getElementById("log");
  const form = document.getElementById("send");
  const input = document.getElementById("text");
  const status = document.getElementById("status");
  const say = (text) => { status.textContent = text; };
  const follow = () => { log.scrollTop = log.scrollHeight; }; // keep the newest in view
  let busy = false;

  // A reply bubble shows one of its siblings: 🔁 writes another into it, ◀ ▶ page through
  // them on the server (votes then land on the sibling shown), and the conversation goes on
  // from the one shown.
  function makeGroup(li, state) {
    li.state = state;
    addControls(li);
    show(li);
  }

  function show(li) {
    const s = li.state;
    li.dataset.id = s.id;
    li.querySelector(".text").textContent = s.text;
    if (s.character) li.querySelector(".who").textContent = s.character;
    const pager = li.querySelector(".pager");
    pager.hidden = s.count < 2;
    pager.querySelector(".count").textContent = `${s.index + 1}/${s.count}`;
    li.querySelector(".up").classList.toggle("on", s.vote === 1);
    li.querySelector(".down").classList.toggle("on", s.vote === -1);
  }

  async function page(li, step) {
    const shown = await postJSON("/api/chat/swipe", { message_id: li.state.id, step });
    Object.assign(li.state, shown);
    show(li);
  }

  function addControls(li) {
    const bar = el("div", "controls");
    const button = (cls, label, title, action) => {
      const b = el("button", cls, label);
      b.type = "button";
      b.title = title;
      b.addEventListener("click", () => action().catch((e) => say(e.message)));
      return b;
    };
    bar.append(
      button("up", "👍", "good reply", () => vote(li, 1)),
      button("down", "👎", "bad reply", () => vote(li, -1)),
      button("fix", "✏️", "write a better reply", async () => openFix(li)),
      button("regen", "🔁", "another take", () => regenerate(li)),
    );
    const pager = el("span", "pager");
    pager.append(
      button("prev", "◀", "previous take", () => page(li, -1)),
      el("span", "count"),
      button("next", "▶", "next take", () => page(li, 1)),
    );
    bar.append(pager);
    li.append(bar);
  }

  async function vote(li, value) {
    const s = li.state;
    const wanted = s.vote === value ? 0 : value; // a second click takes the vote back
    await postJSON("/api/chat/rate", { message_id: s.id, value: wanted });
    s.vote = wanted;
    show(li);
    say(wanted === 0 ? "vote removed" : wanted > 0 ? "rated 👍" : "rated 👎");
  }

  function openFix(li) {
    if (li.querySelector(".fix-form")) return;
    const box = el("form", "fix-form");
    const area = el("textarea");
    area.rows = 3;
    area.placeholder = "A better reply…";
    area.value = li.state.text;
    const save = el("button", "", "Save correction");
    save.type = "submit";
    box.append(area, save);
    box.addEventListener("submit", (event) => {
      event.preventDefault();
      postJSON("/api/chat/correct", { message_id: li.state.id, text: area.value })
        .then(() => { box.remove(); say("correction saved"); })
        .catch((e) => say(e.message));
    });
    li.append(box);
    area.focus();
  }

  function streamInto(li, url, body, onDone) {
    const textNode = li.querySelector(".text");
    li.classList.add("streaming");
    return postStream(url, body, (event, data) => {
      if (event === "text") {
        textNode.textContent = data.text;
        li.querySelector(".who").textContent = data.character;
        follow();
      } else if (event === "notice") {
        log.append(el("li", "msg notice", data.text));
        follow();
      } else if (event === "swipe") {
        Object.assign(li.state, data);
      } else if (event === "done") {
        li.classList.remove("streaming");
        onDone(data);
      } else if (event === "error") {
        say(data.text);
      }
    }).finally(() => li.classList.remove("streaming"));
  }

  async function regenerate(li) {
    if (busy) return;
    busy = true;
    try {
      await streamInto(li, "/api/chat/regenerate", { message_id: li.state.id }, (data) => {
        if (data.status !== "ok") return;
        Object.assign(li.state, { text: data.text, character: data.character, vote: 0 });
      });
    } finally {
      busy = false;
      show(li);
    }
  }

  async function send(text) {
    if (busy) return;
    busy = true;
    const body = { text };
    const mine = el("li", "msg user");
    mine.append(el("span", "who", "You"), el("span", "text", text));
    log.append(mine);
    const li = el("li", "msg assistant");
    li.append(el("span", "who", ""), el("span", "text", ""));
    log.append(li);
    follow();
    try {
      await streamInto(li, "/api/chat/send", body, (data) => {
        if (data.status === "ok" && data.id) {
          li.dataset.row = data.reply_id;
          makeGroup(li, {
            id: data.id, text: data.text, character: data.character, vote: 0, index: 0, count: 1,
          });
        } else if (!li.querySelector(".text").textContent) {
          li.remove();
        }
        follow();
      });
      say("");
    } catch (e) {
      li.remove();
      say(e.message);
    } finally {
      busy = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // A greeting opens a conversation: shown like a reply, without the rating buttons.
  function showGreeting(greeting) {
    const li = el("li", "msg assistant greeting");
    li.append(el("span", "who", greeting.character), el("span", "text", greeting.text));
    log.append(li);
  }

  document.getElementById("reset").addEventListener("click", () => {
    postJSON("/api/chat/reset").then((data) => {
      log.replaceChildren();
      say("conversation reset");
      if (data.greeting) showGreeting(data.greeting);
    }).catch((e) => say(e.message));
  });

  document.getElementById("character").addEventListener("change", (event) => {
    postJSON("/api/chat/character", { name: event.target.value }).then((data) => {
      input.placeholder = `Say something to ${data.character}…`;
      if (data.greeting) showGreeting(data.greeting);
      say(`now talking to ${data.character}`);
    }).catch((e) => say(e.message));
  });

  // Replies already on the page (after a reload), each as the sibling its bubble shows.
  for (const li of log.querySelectorAll("li.assistant[data-id]")) {
    makeGroup(li, {
      id: li.dataset.id,
      text: li.querySelector(".text").textContent,
      character: li.querySelector(".who").textContent,
      vote: Number(li.dataset.vote || 0),
      index: Number(li.dataset.index || 0),
      count: Number(li.dataset.count || 1),
    });
  }
  log.scrollTop = log.scrollHeight;
}

// -- review queue: j/k move, e edit, a accept, x exclude -------------------------------------

function setupReview() {
  const items = [...document.querySelectorAll(".item")];
  if (!items.length) return;
  let at = Math.max(0, items.findIndex((i) => "#" + i.id === location.hash));
  const focus = (index, scroll = true) => {
    items[at].classList.remove("current");
    at = Math.min(items.length - 1, Math.max(0, index));
    items[at].classList.add("current");
    if (scroll) items[at].scrollIntoView({ block: "nearest" });
  };
  focus(at, Boolean(location.hash)); // back from an action: that item; else the filters stay in view
  document.addEventListener("keydown", (event) => {
    const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(event.target.tagName);
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      if (event.key === "Enter" && event.ctrlKey && event.target.form) {
        event.preventDefault();
        event.target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const item = items[at];
    if (event.key === "j") focus(at + 1);
    else if (event.key === "k") focus(at - 1);
    else if (event.key === "e") item.querySelector("textarea[name=text]").focus();
    else if (event.key === "a") {
      const accepts = item.querySelectorAll("form.accept button");
      if (accepts.length) accepts[accepts.length - 1].click(); // the newest correction
    } else if (event.key === "x") {
      const reason = item.querySelector("input[name=reason]");
      if (reason) reason.focus();
    } else return;
    event.preventDefault();
  });
}

// -- characters: confirm a switch -------------------------------------------------------------

function setupConfirm() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "chat") setupChat();
  if (page === "review") setupReview();
  setupConfirm();
});
