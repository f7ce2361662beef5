//! Realistic replacement values, chosen by a keyed digest of the input so
//! the same input always gives the same output (and joins on faked columns
//! hold). The word lists are part of this crate on purpose: a generator
//! library updating its lists would silently change every output between
//! two releases.
//!
//! Email addresses use the reserved `example.*` domains (RFC 2606) and phone
//! numbers the fictional 555-01xx range, so no output reaches a real person.

use std::fmt::Write;

use super::key::hex;

const FIRST_NAMES: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Margaret",
    "Mark",
    "Sandra",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Paul",
    "Emily",
    "Andrew",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Dorothy",
    "George",
    "Melissa",
    "Timothy",
    "Deborah",
    "Ronald",
    "Stephanie",
    "Edward",
    "Rebecca",
    "Jason",
    "Sharon",
    "Jeffrey",
    "Laura",
    "Ryan",
    "Cynthia",
    "Jacob",
    "Kathleen",
    "Gary",
    "Amy",
    "Nicholas",
    "Angela",
    "Eric",
    "Shirley",
    "Jonathan",
    "Anna",
    "Stephen",
    "Brenda",
    "Larry",
    "Pamela",
    "Justin",
    "Emma",
    "Scott",
    "Nicole",
    "Brandon",
    "Helen",
    "Benjamin",
    "Samantha",
    "Samuel",
    "Katherine",
    "Gregory",
    "Christine",
    "Alexander",
    "Debra",
    "Patrick",
    "Rachel",
    "Frank",
    "Carolyn",
    "Raymond",
    "Janet",
    "Jack",
    "Maria",
    "Dennis",
    "Olivia",
    "Jerry",
    "Heather",
    "Tyler",
    "Diane",
    "Aaron",
    "Julie",
    "Jose",
    "Joyce",
    "Adam",
    "Victoria",
    "Nathan",
    "Ruth",
    "Henry",
    "Virginia",
    "Zachary",
    "Lauren",
    "Peter",
    "Kelly",
    "Kyle",
    "Christina",
    "Noah",
    "Joan",
    "Ethan",
    "Evelyn",
    "Jeremy",
    "Judith",
    "Walter",
    "Andrea",
    "Christian",
    "Hannah",
    "Keith",
    "Megan",
    "Roger",
    "Cheryl",
    "Terry",
    "Jacqueline",
    "Austin",
    "Martha",
    "Sean",
    "Madison",
    "Gerald",
    "Teresa",
    "Carl",
    "Gloria",
    "Harold",
    "Sara",
    "Dylan",
    "Janice",
    "Arthur",
    "Ann",
    "Lawrence",
    "Kathryn",
    "Jordan",
    "Abigail",
    "Jesse",
    "Sophia",
    "Bryan",
    "Frances",
    "Billy",
    "Jean",
    "Bruce",
    "Alice",
    "Gabriel",
    "Judy",
    "Joe",
    "Isabella",
    "Logan",
    "Julia",
    "Alan",
    "Grace",
    "Juan",
    "Amber",
    "Albert",
    "Denise",
    "Willie",
    "Danielle",
    "Elijah",
    "Marilyn",
    "Wayne",
    "Beverly",
    "Randy",
    "Charlotte",
    "Vincent",
    "Natalie",
    "Mason",
    "Theresa",
    "Roy",
    "Diana",
    "Ralph",
    "Brittany",
    "Bobby",
    "Doris",
    "Russell",
    "Kayla",
    "Bradley",
    "Alexis",
    "Philip",
    "Lori",
    "Eugene",
    "Marie",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
    "James",
    "Bennett",
    "Gray",
    "Mendoza",
    "Ruiz",
    "Hughes",
    "Price",
    "Alvarez",
    "Castillo",
    "Sanders",
    "Patel",
    "Myers",
    "Long",
    "Ross",
    "Foster",
    "Jimenez",
    "Powell",
    "Jenkins",
    "Perry",
    "Russell",
    "Sullivan",
    "Bell",
    "Coleman",
    "Butler",
    "Henderson",
    "Barnes",
    "Gonzales",
    "Fisher",
    "Vasquez",
    "Simmons",
    "Romero",
    "Jordan",
    "Patterson",
    "Alexander",
    "Hamilton",
    "Graham",
    "Reynolds",
    "Griffin",
    "Wallace",
    "Moreno",
    "West",
    "Cole",
    "Hayes",
    "Bryant",
    "Herrera",
    "Gibson",
    "Ellis",
    "Tran",
    "Medina",
    "Aguilar",
    "Stevens",
    "Murray",
    "Ford",
    "Castro",
    "Marshall",
    "Owens",
    "Harrison",
    "Fernandez",
    "McDonald",
    "Woods",
    "Washington",
    "Kennedy",
    "Wells",
    "Vargas",
    "Henry",
    "Chen",
    "Freeman",
    "Webb",
    "Tucker",
    "Guzman",
    "Burns",
    "Crawford",
    "Olson",
    "Simpson",
    "Porter",
    "Hunter",
    "Gordon",
    "Mendez",
    "Silva",
    "Shaw",
    "Snyder",
    "Mason",
    "Dixon",
    "Munoz",
    "Hunt",
    "Hicks",
    "Holmes",
    "Palmer",
    "Wagner",
    "Black",
    "Robertson",
    "Boyd",
    "Rose",
    "Stone",
    "Salazar",
    "Fox",
    "Warren",
    "Mills",
    "Meyer",
    "Rice",
    "Schmidt",
    "Garza",
    "Daniels",
    "Ferguson",
    "Nichols",
    "Stephens",
    "Soto",
    "Weaver",
    "Ryan",
    "Gardner",
    "Payne",
    "Grant",
    "Dunn",
    "Kelley",
    "Spencer",
    "Hawkins",
];

const EMAIL_DOMAINS: &[&str] = &["example.com", "example.net", "example.org"];

const STREETS: &[&str] = &[
    "Maple",
    "Oak",
    "Pine",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Main",
    "Church",
    "Walnut",
    "Spring",
    "North",
    "Ridge",
    "Highland",
    "Sunset",
    "Forest",
    "River",
    "Meadow",
    "Jefferson",
    "Lincoln",
    "Madison",
    "Franklin",
    "Willow",
    "Chestnut",
    "Mill",
    "Cherry",
    "Center",
    "Prospect",
    "Union",
    "Lakeview",
    "Valley",
    "Dogwood",
    "Birch",
    "Locust",
    "Hickory",
    "Sycamore",
    "Magnolia",
    "Adams",
    "Green",
    "Jackson",
    "Woodland",
    "College",
    "Railroad",
    "Bridge",
    "Colonial",
    "Orchard",
    "Heritage",
    "Summit",
];

const STREET_SUFFIXES: &[&str] = &[
    "Street",
    "Avenue",
    "Road",
    "Lane",
    "Drive",
    "Court",
    "Place",
    "Boulevard",
    "Way",
    "Terrace",
];

/// City, state code and the first two digits of its ZIP codes.
const CITIES: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "62"),
    ("Riverside", "CA", "92"),
    ("Franklin", "TN", "37"),
    ("Greenville", "SC", "29"),
    ("Bristol", "CT", "06"),
    ("Clinton", "IA", "52"),
    ("Fairview", "OR", "97"),
    ("Salem", "MA", "01"),
    ("Madison", "WI", "53"),
    ("Georgetown", "TX", "78"),
    ("Arlington", "VA", "22"),
    ("Ashland", "OH", "44"),
    ("Burlington", "VT", "05"),
    ("Dover", "DE", "19"),
    ("Manchester", "NH", "03"),
    ("Milton", "PA", "17"),
    ("Newport", "RI", "02"),
    ("Oxford", "MS", "38"),
    ("Hudson", "NY", "12"),
    ("Marion", "IN", "46"),
    ("Lexington", "KY", "40"),
    ("Auburn", "AL", "36"),
    ("Jackson", "MI", "49"),
    ("Columbia", "MO", "65"),
    ("Lebanon", "NH", "03"),
    ("Kingston", "NY", "12"),
    ("Troy", "OH", "45"),
    ("Camden", "NJ", "08"),
    ("Aurora", "CO", "80"),
    ("Florence", "AZ", "85"),
];

const AREA_CODES: &[&str] = &[
    "201", "202", "206", "212", "213", "214", "303", "305", "312", "313", "404", "415", "503",
    "512", "602", "617", "646", "702", "713", "718", "773", "801", "818", "858", "917", "919",
];

const COMPANY_WORDS: &[&str] = &[
    "Northwind",
    "Summit",
    "Bluewater",
    "Ironwood",
    "Silverline",
    "Granite",
    "Evergreen",
    "Redstone",
    "Brightpath",
    "Clearview",
    "Oakridge",
    "Pioneer",
    "Harbor",
    "Keystone",
    "Lakeshore",
    "Meridian",
    "Crescent",
    "Frontier",
    "Horizon",
    "Riverbend",
    "Stonebridge",
    "Westfield",
    "Copperleaf",
    "Highpoint",
    "Cobalt",
    "Juniper",
    "Beacon",
    "Sterling",
    "Trailhead",
    "Wildflower",
];

const COMPANY_TRADES: &[&str] = &[
    "Logistics",
    "Software",
    "Consulting",
    "Analytics",
    "Manufacturing",
    "Foods",
    "Health",
    "Energy",
    "Media",
    "Outfitters",
    "Systems",
    "Labs",
    "Partners",
    "Supply",
    "Design",
    "Robotics",
    "Logistics Group",
    "Financial",
    "Networks",
    "Studios",
];

const COMPANY_SUFFIXES: &[&str] = &["Inc.", "LLC", "Ltd.", "Co.", "Group", "Corp."];

/// What a `fake` transform produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    Name,
    FirstName,
    LastName,
    Email,
    Phone,
    Address,
    Company,
}

impl FakeKind {
    pub const ALL: &'static [(&'static str, FakeKind)] = &[
        ("name", FakeKind::Name),
        ("first_name", FakeKind::FirstName),
        ("last_name", FakeKind::LastName),
        ("email", FakeKind::Email),
        ("phone", FakeKind::Phone),
        ("address", FakeKind::Address),
        ("company", FakeKind::Company),
    ];

    pub fn parse(s: &str) -> Option<FakeKind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    /// The longest output, in characters, without `unique` and `max_length`.
    pub fn max_len(self) -> usize {
        let longest = |l: &[&str]| l.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        match self {
            FakeKind::FirstName => longest(FIRST_NAMES),
            FakeKind::LastName => longest(LAST_NAMES),
            FakeKind::Name => longest(FIRST_NAMES) + 1 + longest(LAST_NAMES),
            // first.last + up to 4 digits + @ + domain
            FakeKind::Email => {
                longest(FIRST_NAMES) + 1 + longest(LAST_NAMES) + 4 + 1 + longest(EMAIL_DOMAINS)
            }
            FakeKind::Phone => "+1 (000) 555-0100".len(),
            FakeKind::Address => {
                5 + 1
                    + longest(STREETS)
                    + 1
                    + longest(STREET_SUFFIXES)
                    + 2
                    + CITIES.iter().map(|c| c.0.len()).max().unwrap_or(0)
                    + ", XX 00000".len()
            }
            FakeKind::Company => {
                longest(COMPANY_WORDS) + 1 + longest(COMPANY_TRADES) + 1 + longest(COMPANY_SUFFIXES)
            }
        }
    }
}

/// Picks words from a digest, two bytes at a time (the choice bias over at
/// most a few hundred words is negligible).
struct Picker<'a> {
    digest: &'a [u8; 32],
    at: usize,
}

impl Picker<'_> {
    fn next(&mut self) -> usize {
        let i = self.at % 30;
        self.at += 2;
        usize::from(u16::from_be_bytes([self.digest[i], self.digest[i + 1]]))
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.next() % list.len()]
    }
}

/// The fake value of `kind` for an input whose keyed digest is `digest`.
/// `unique` (email only) appends 64 bits of the digest to the local part,
/// making collisions as unlikely as for a 64-bit hash.
pub fn generate(kind: FakeKind, digest: &[u8; 32], unique: bool) -> String {
    let mut p = Picker { digest, at: 0 };
    match kind {
        FakeKind::FirstName => p.pick(FIRST_NAMES).to_owned(),
        FakeKind::LastName => p.pick(LAST_NAMES).to_owned(),
        FakeKind::Name => format!("{} {}", p.pick(FIRST_NAMES), p.pick(LAST_NAMES)),
        FakeKind::Email => {
            let first = p.pick(FIRST_NAMES).to_ascii_lowercase();
            let last = p.pick(LAST_NAMES).to_ascii_lowercase();
            let domain = p.pick(EMAIL_DOMAINS);
            let mut local = match p.next() % 4 {
                0 => format!("{first}.{last}"),
                1 => format!("{}{last}", &first[..1]),
                2 => format!("{first}_{last}"),
                _ => format!("{first}{last}"),
            };
            if unique {
                let _ = write!(local, ".{}", hex(&digest[24..32]));
            } else if !p.next().is_multiple_of(3) {
                let _ = write!(local, "{}", p.next() % 1000);
            }
            format!("{local}@{domain}")
        }
        FakeKind::Phone => format!("+1 ({}) 555-01{:02}", p.pick(AREA_CODES), p.next() % 100),
        FakeKind::Address => {
            let (city, state, zip) = p.pick(CITIES);
            format!(
                "{} {} {}, {city}, {state} {zip}{:03}",
                1 + p.next() % 9899,
                p.pick(STREETS),
                p.pick(STREET_SUFFIXES),
                p.next() % 1000
            )
        }
        FakeKind::Company => match p.next() % 3 {
            0 => format!("{} {}", p.pick(COMPANY_WORDS), p.pick(COMPANY_TRADES)),
            1 => format!("{} {}", p.pick(LAST_NAMES), p.pick(COMPANY_SUFFIXES)),
            _ => format!(
                "{} {} {}",
                p.pick(COMPANY_WORDS),
                p.pick(COMPANY_TRADES),
                p.pick(COMPANY_SUFFIXES)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8 * 7);
        }
        d
    }

    #[test]
    fn outputs_are_deterministic_realistic_and_bounded() {
        for n in 0..=255u8 {
            let d = digest(n);
            for (_, kind) in FakeKind::ALL {
                let a = generate(*kind, &d, false);
                assert_eq!(a, generate(*kind, &d, false));
                assert!(!a.is_empty());
                assert!(
                    a.chars().count() <= kind.max_len(),
                    "{kind:?} {a:?} longer than {}",
                    kind.max_len()
                );
            }
            let email = generate(FakeKind::Email, &d, false);
            let (local, domain) = email.split_once('@').unwrap();
            assert!(
                !local.is_empty() && domain.starts_with("example."),
                "{email}"
            );
            let phone = generate(FakeKind::Phone, &d, false);
            assert!(
                phone.starts_with("+1 (") && phone.contains(") 555-01"),
                "{phone}"
            );
            let unique = generate(FakeKind::Email, &d, true);
            assert!(unique.contains(&hex(&d[24..32])), "{unique}");
        }
        assert_eq!(FakeKind::parse("first_name"), Some(FakeKind::FirstName));
        assert_eq!(FakeKind::parse("ssn"), None);
    }

    #[test]
    fn different_digests_spread_over_the_lists() {
        let names: std::collections::HashSet<String> = (0..=255u8)
            .map(|n| generate(FakeKind::Name, &digest(n), false))
            .collect();
        assert!(names.len() > 200, "{}", names.len());
    }
}
