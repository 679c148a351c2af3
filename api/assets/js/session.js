// Who the stored key belongs to (GET /api/me); its role decides which controls pages show.

import { api } from './api.js';

// Each role includes the ones before it.
const RANKS = { viewer: 1, operator: 2, admin: 3 };

let me = null;

/** Asks the API for the key's id, name and role, and keeps them for can(). */
export async function loadMe() {
  me = (await api('/api/me')).data;
  return me;
}

export function forgetMe() {
  me = null;
}

/** The key's {key_id, name, role}, or null until loadMe() has answered. */
export function whoAmI() {
  return me;
}

/**
 * Whether the key holds at least `role`: `operator` works incidents and notifications and
 * previews backtests, `admin` changes rules, departments, channels and services.
 */
export function can(role) {
  return (RANKS[me?.role] ?? 0) >= RANKS[role];
}
