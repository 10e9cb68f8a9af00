/**
 * Aliases: names that stand for a collection (alias -> collection). An alias has a collection's
 * name form, may not be a collection's name, and points to a collection (never to an alias).
 * Every database call resolves the name it is given once, at its entry (resolveName); a switch
 * moves an alias to another collection in one step, so a call sees the old or the new one.
 * A collection that aliases point to cannot be dropped (FAILED_PRECONDITION names them).
 */
import { QuiverError } from '../errors';
import { aliasActionsMax } from '../common/limits';
import type { AliasAction, AliasInfo } from './types';
import { checkFields, checkName, isPlainObject } from './validate';

/** The collection a name stands for: itself, or the collection of the alias it is. */
export function resolveName(aliases: ReadonlyMap<string, string>, name: unknown): string {
  const n = checkName(name);
  return aliases.get(n) ?? n;
}

/**
 * The collection of `collections` that `name` stands for (its own name or an alias's); NOT_FOUND
 * names it in `details.collection` (a cluster node looks such a name up in etcd: Service.run).
 */
export function collectionNamed<C>(collections: ReadonlyMap<string, C>, aliases: ReadonlyMap<string, string>, name: unknown): C {
  const c = collections.get(resolveName(aliases, name));
  if (!c) throw new QuiverError('NOT_FOUND', `no collection or alias named "${String(name)}"`, { collection: String(name) });
  return c;
}

/** The aliases as the API lists them, by alias. */
export function aliasList(aliases: ReadonlyMap<string, string>): AliasInfo[] {
  return [...aliases].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([alias, collection]) => ({ alias, collection }));
}

/** The aliases of `collection`, by alias. */
export function aliasesOf(aliases: ReadonlyMap<string, string>, collection: string): string[] {
  return aliasList(aliases)
    .filter((a) => a.collection === collection)
    .map((a) => a.alias);
}

/** FAILED_PRECONDITION when aliases point to `collection` (it cannot be dropped). */
export function checkNotAliased(aliases: ReadonlyMap<string, string>, collection: string): void {
  const held = aliasesOf(aliases, collection);
  if (held.length > 0) {
    throw new QuiverError('FAILED_PRECONDITION', `collection "${collection}" has aliases (${held.join(', ')}): delete or switch them first`);
  }
}

/**
 * The aliases after `actions`, applied in order to a copy: all or none. Each is
 * `{action: 'create' | 'switch', alias, collection}` or `{action: 'delete', alias}`.
 * INVALID_ARGUMENT for a malformed action; ALREADY_EXISTS to create an alias that exists or has a
 * collection's name; NOT_FOUND to switch or delete an alias that does not exist, or to point one
 * to a collection that does not exist.
 */
export function applyAliasActions(aliases: ReadonlyMap<string, string>, isCollection: (name: string) => boolean, actions: unknown): Map<string, string> {
  if (!Array.isArray(actions) || actions.length === 0 || actions.length > aliasActionsMax) {
    throw new QuiverError('INVALID_ARGUMENT', `actions must be an array of 1..${aliasActionsMax} alias actions (aliasActionsMax)`);
  }
  const out = new Map(aliases);
  actions.forEach((a: unknown, i) => {
    if (!isPlainObject(a)) throw new QuiverError('INVALID_ARGUMENT', `actions[${i}] must be an object {action, alias, collection?}`);
    const kind = a.action;
    if (kind !== 'create' && kind !== 'switch' && kind !== 'delete') {
      throw new QuiverError('INVALID_ARGUMENT', `actions[${i}].action must be "create", "switch" or "delete"`);
    }
    checkFields(a, kind === 'delete' ? ['action', 'alias'] : ['action', 'alias', 'collection'], `actions[${i}]`);
    const alias = checkName(a.alias);
    if (kind === 'create') {
      if (out.has(alias)) throw new QuiverError('ALREADY_EXISTS', `alias "${alias}" exists`);
      if (isCollection(alias)) throw new QuiverError('ALREADY_EXISTS', `"${alias}" is a collection's name`);
    } else if (!out.has(alias)) {
      throw new QuiverError('NOT_FOUND', `no alias named "${alias}"`, { collection: alias });
    }
    if (kind === 'delete') {
      out.delete(alias);
      return;
    }
    const collection = checkName(a.collection);
    if (!isCollection(collection)) {
      throw new QuiverError('NOT_FOUND', `no collection named "${collection}"${out.has(collection) ? ' (an alias points to a collection, not to an alias)' : ''}`, { collection });
    }
    out.set(alias, collection);
  });
  return out;
}
